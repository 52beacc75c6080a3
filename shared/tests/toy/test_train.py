"""The toy trainer (toyworld.md §8.5–8.6) at ``--preset ci``: loss, gradients, bit-exact resume, data purity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flowcore.toy.data import MASK_ID, batch_spec, materialize, sample_ids
from flowcore.toy.trainer import (
    OBJECTIVES,
    RECIPES,
    TrainOptions,
    _lr_factor,
    get_recipe,
    list_checkpoints,
    load_run_module,
    parse_duration,
    recipe_names,
    train,
)

CI = dict(preset="ci", device="cpu", clip_from="random", print_every_s=1e9)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _state(run: Path, step: int) -> tuple[dict, list]:
    folder = run / "checkpoints" / f"step-{step:07d}"
    ema = torch.load(folder / "custom_checkpoint_0.pkl", weights_only=False)["shadow_params"]
    return load_file(folder / "model.safetensors"), ema


def test_twenty_steps_lower_the_loss_and_resume_is_bit_exact(tmp_path):
    """20 steps straight == 10 steps + resume + 10 steps, bit for bit (weights, EMA, every logged loss)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = train("toy-sd3", straight, steps=20, **CI)
    assert summary["status"] == "finished" and summary["steps"] == 20
    losses = _losses(straight)
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert train("toy-sd3", split, steps=20, stop_after=10, **CI)["status"] == "stopped"
    assert [p.name for p in list_checkpoints(split)] == ["step-0000010"]
    train("toy-sd3", split, steps=20, resume="auto", **CI)
    weights_a, ema_a = _state(straight, 20)
    weights_b, ema_b = _state(split, 20)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert all(torch.equal(a, b) for a, b in zip(ema_a, ema_b))
    assert _losses(split) == losses
    log = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "s_per_step"} <= set(log[0])
    # the two newest checkpoints are kept; a second run into a used folder needs --resume auto
    assert [p.name for p in list_checkpoints(straight)] == ["step-0000020"]
    with pytest.raises(FileExistsError, match="--resume auto"):
        train("toy-sd3", straight, steps=20, **CI)
    module, recipe = load_run_module(straight)
    assert recipe.tag == "toy-sd3@1+ci" and not any(p.requires_grad and p.grad is not None
                                                    for p in module.parameters())


@pytest.mark.parametrize("name", recipe_names())
def test_only_trainable_modules_receive_gradients(name):
    recipe = get_recipe(name, "ci").with_overrides(batch=2)
    opts = TrainOptions(model=name, output_dir=Path("unused"), clip_from="random", init_from="random",
                        unet_from="random", preset="ci")
    objective = OBJECTIVES[recipe.objective](recipe, opts, torch.device("cpu"))
    trainable = {id(p) for p in objective.trainable_parameters()}
    step = 0 if name != "toy-kontext-b" else 1
    loss = objective.loss(objective.module, materialize(batch_spec(recipe, 0, step), "cpu"))
    assert torch.isfinite(loss)
    loss.backward()
    modules = [objective.module, objective.text_encoder, objective.image_encoder,
               getattr(objective, "unet", None), getattr(objective, "teacher", None)]
    seen = {id(p): p for m in modules if m is not None for p in m.parameters()}
    assert trainable and trainable <= set(seen)
    for key, param in seen.items():
        if key in trainable:
            assert param.grad is not None, f"{name}: a trainable parameter got no gradient"
        else:
            assert param.grad is None and not param.requires_grad, f"{name}: a frozen parameter got a gradient"
    if name in ("toy-sd3", "toy-unet", "toy-kontext-a"):
        assert objective.text_encoder is not None and not any(p.requires_grad for p in objective.text_encoder.parameters())


def test_vp_offset_noise_adds_one_constant_per_sample_and_channel_and_leaves_zero_offset_unchanged():
    """The toy-unet recipes' offset noise: ε gains a per-(sample, channel) constant of the recipe's std; with
    ``offset_noise=0`` the recipe dict has no such key, so recipes without it keep their recorded hashes."""
    import dataclasses

    recipe = get_recipe("toy-unet", "ci").with_overrides(batch=64)
    assert get_recipe("toy-unet").offset_noise == 0.1 and recipe.offset_noise == 0.1
    plain = dataclasses.replace(recipe, offset_noise=0.0)
    assert "offset_noise" not in plain.to_dict() and recipe.to_dict()["offset_noise"] == 0.1
    opts = TrainOptions(model="toy-unet", output_dir=Path("unused"), clip_from="random", preset="ci")
    outputs = {}
    for r in (recipe, plain):
        objective = OBJECTIVES["vp"](r, opts, torch.device("cpu"))
        outputs[r.offset_noise] = objective._noisy(materialize(batch_spec(r, 0, 0), "cpu"))[1]
    offset = outputs[0.1] - outputs[0.0]
    per_channel = offset.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(offset, per_channel.expand_as(offset), atol=1e-6)  # constant over positions
    assert 0.07 < float(per_channel.std()) < 0.13  # 64 × 12 draws of std 0.1


def test_recipes_have_versions_hashes_and_overrides():
    assert set(recipe_names()) == {"toy-clip", "toy-sd3", "toy-kontext-a", "toy-kontext-b", "toy-unet",
                                   "toy-unet-controlnet", "toy-unet-ip-adapter"}
    sd3 = get_recipe("toy-sd3")
    assert (sd3.steps, sd3.batch, sd3.lr, sd3.warmup) == (20000, 32, 3e-4, 500)
    assert get_recipe("toy-kontext-a").edit_batch == 24 and get_recipe("toy-kontext-b").lr == 5e-5
    assert len(sd3.sha256) == 64 and sd3.sha256 == get_recipe("toy-sd3").sha256
    bigger = sd3.with_overrides(batch=128)
    assert (bigger.batch, bigger.steps, bigger.warmup, bigger.lr) == (128, 5000, 125, 3e-4)
    assert bigger.sha256 != sd3.sha256 and bigger.base == "toy-sd3@1"
    kontext = get_recipe("toy-kontext-a").with_overrides(batch=128)
    assert kontext.edit_batch == 96
    assert RECIPES["ci"]["toy-sd3"].tag == "toy-sd3@1+ci"
    with pytest.raises(ValueError, match="unknown training recipe"):
        get_recipe("toy-sdxl")
    assert parse_duration("170m") == 10200 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("ten minutes")


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    recipe = get_recipe("toy-sd3")
    assert _lr_factor(recipe, 0, 0.0) == pytest.approx(1 / 500)
    assert _lr_factor(recipe, 499, 0.0) == pytest.approx(1.0)
    assert _lr_factor(recipe, 10000, 0.5) == pytest.approx(0.55)
    assert _lr_factor(recipe, 20000, 1.0) == pytest.approx(0.1)


def test_batches_are_pure_functions_of_seed_step_rank():
    recipe = get_recipe("toy-unet", "ci")
    a, b = batch_spec(recipe, 0, 3, rank=1, world=2), batch_spec(recipe, 0, 3, rank=1, world=2)
    assert np.array_equal(a.ids, sample_ids(8, 3, 1, 2)) and a.ids[0] == (3 * 2 + 1) * 8
    assert np.array_equal(a.input_ids, b.input_ids) and a.items == b.items
    other = batch_spec(recipe, 0, 3, rank=0, world=2)
    assert not set(a.ids) & set(other.ids)
    x, y = materialize(a, "cpu"), materialize(b, "cpu")
    assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["t"], y["t"])
    assert torch.equal(torch.randn(4, generator=x["generator"]), torch.randn(4, generator=y["generator"]))
    assert x["pixels"].shape == (8, 3, 32, 32)


def test_recipe_specific_batches():
    kontext = get_recipe("toy-kontext-a", "ci")
    kinds = {batch_spec(kontext, 0, s).kind for s in range(12)}
    sizes = {batch_spec(kontext, 0, s).size for s in range(40)}
    assert kinds == {"edit", "image"} and sizes == {32, 16, 8}
    edit = next(batch_spec(kontext, 0, s) for s in range(12) if batch_spec(kontext, 0, s).kind == "edit")
    batch = materialize(edit, "cpu")
    assert batch["reference"].shape == batch["pixels"].shape and len(edit.items) == kontext.edit_batch
    clip = batch_spec(get_recipe("toy-clip", "ci").with_overrides(batch=64), 0, 0)
    labels, masked = clip.draws["mlm_labels"], clip.draws["mlm_input_ids"]
    assert (masked[labels != -100] == MASK_ID).all() and 0 < (labels != -100).mean() < 0.3
    assert {kind for kind, _ in clip.items} == {"scene", "mannequin", "design"}
    control = batch_spec(get_recipe("toy-unet-controlnet", "ci").with_overrides(batch=32), 0, 0)
    out = materialize(control, "cpu")["control"]
    assert out.shape == (32, 3, 32, 32) and set(out.unique().tolist()) <= {0.0, 1.0}
    modes = control.draws["control"]
    assert (out[torch.from_numpy(modes == 2)] == 0).all() and (modes == 0).any()


def test_time_budget_stops_and_checkpoints(tmp_path):
    summary = train("toy-sd3", tmp_path / "run", steps=20, time_budget=0.0, **CI)
    assert summary["status"] == "time budget" and summary["steps"] == 0
    meta = json.loads((list_checkpoints(tmp_path / "run")[-1] / "meta.json").read_text())
    assert meta["status"] == "time budget" and meta["finished"] is False


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from flowcore.toy import trainer as train_module

    original = train_module.FlowObjective.loss
    calls = []

    def poisoned(self, model, batch):
        calls.append(1)
        loss = original(self, model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module.FlowObjective, "loss", poisoned)
    summary = train("toy-sd3", tmp_path / "run", steps=10, checkpoint_every=2, **CI)
    assert summary["status"].startswith("diverged") and summary["steps"] == 3
    newest = list_checkpoints(tmp_path / "run")[-1]
    assert newest.name == "step-0000002"
    assert json.loads((newest / "meta.json").read_text())["step"] == 2
    _, ema = _state(tmp_path / "run", 2)
    assert all(torch.isfinite(t).all() for t in ema)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    """2 CPU processes (torchrun; the Accelerator picks the gloo backend): trains, checkpoints, logs once."""
    run = tmp_path / "gloo"
    env = {**os.environ, "FLOWCORE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "flowcore.toy", "train", "--model", "toy-sd3", "--preset", "ci", "--device", "cpu", "--steps", "6",
           "--clip-from", "random", "--output-dir", str(run)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world"] == 2
    assert len(_losses(run)) == 6
    meta = json.loads((list_checkpoints(run)[-1] / "meta.json").read_text())
    assert meta["step"] == 6 and meta["samples"] == 6 * 8 * 2


@pytest.mark.slow
def test_sigterm_checkpoints_and_resumes(tmp_path):
    import signal
    import time

    run = tmp_path / "term"
    cmd = [sys.executable, "-m", "flowcore.toy", "train", "--model", "toy-sd3", "--preset", "ci", "--device",
           "cpu", "--steps", "100000", "--clip-from", "random", "--output-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "log.jsonl").is_file():
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 0
    meta = json.loads((list_checkpoints(run)[-1] / "meta.json").read_text())
    assert meta["status"] == "interrupted (SIGTERM)" and meta["step"] >= 1


@pytest.mark.slow
def test_gpu_orchestrator_rehearsal_on_cpu(tmp_path):
    """shared/scripts/gpu_train_all.py end to end on CPU at --preset ci: exits within its budget and packs
    one tar per model, the manifest, the summary and the logs (≤ 8 files)."""
    import time

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_train_all.py"
    out = tmp_path / "rehearsal"
    t0 = time.time()
    result = subprocess.run([sys.executable, str(script), "--device", "cpu", "--budget-min", "2.5", "--preset",
                             "ci", "--clip-from", "random", "--out", str(out)],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.time() - t0 < 2.5 * 60 + 20  # the budget, plus interpreter start-up
    pack = sorted(p.name for p in (out / "pack").iterdir())
    assert {"MANIFEST.json", "summary.json", "logs.tar.gz"} <= set(pack) and len(pack) <= 8
    summary = json.loads((out / "pack" / "summary.json").read_text())
    assert "toy-sd3" in summary["exported"] and summary["models"]["toy-sd3"]["steps"] >= 1


def test_unpacking_an_adapters_only_pack_keeps_the_shipped_unet(tmp_path, monkeypatch):
    """gpu_train_all.py --skip toy-unet packs only the ControlNet / IP-Adapter; --unpack swaps those and keeps the
    UNet and its manifest part (it used to replace the whole toy-unet folder)."""
    import copy
    import importlib.util
    import shutil
    import tarfile

    import flowcore.toy

    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_train_all.py"
    spec = importlib.util.spec_from_file_location("gpu_train_all", script)
    gpu_train_all = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_train_all", gpu_train_all)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_train_all)
    root = tmp_path / "weights"
    shutil.copytree(Path(flowcore.toy.__file__).parent / "weights", root)
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(root))  # unpack points it at root; restored afterwards
    before = json.loads((root / "MANIFEST.json").read_text())["models"]["toy-unet"]
    incoming = copy.deepcopy(before)
    incoming["parts"] = {name: {**part, "steps": 7} for name, part in before["parts"].items() if name != "unet"}
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "MANIFEST.json").write_text(json.dumps({"models": {"toy-unet": incoming}}))
    with tarfile.open(pack / "toy-unet.tar", "w") as tar:
        for sub in ("controlnet", "ip_adapter"):
            tar.add(root / "toy-unet" / sub, arcname=f"toy-unet/{sub}")
    assert gpu_train_all.unpack(pack, root) == 0
    after = json.loads((root / "MANIFEST.json").read_text())["models"]["toy-unet"]
    assert (root / "toy-unet" / "unet" / "config.json").is_file()
    assert after["parts"]["unet"] == before["parts"]["unet"] and after["recipe"] == before["recipe"]
    assert after["parts"]["controlnet"]["steps"] == 7 and after["parts"]["ip_adapter"]["steps"] == 7
    assert after["files"] == before["files"] and after.get("history") == before.get("history")
