"""Fine-tuning (spec §5): call counts (test 18), loss, checkpoints/resume, teacher checks, timestep sampling."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from t5lin_helpers import make_sd3, tiny_adapter

from flowcore.testing import CallCounter
from t5_linearize import FinetuneConfig, finetune, linearize
from t5_linearize.training import TensorData, sample_sigmas


def _data(n: int = 8, seed: int = 0):
    from flowcore.adapters import Conditioning

    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 4, 8, 8, generator=g)
    cond = Conditioning(torch.randn(n, 7, 64, generator=g), torch.randn(n, 64, generator=g))
    return TensorData(latents, cond)


def _config(tmp_path, **changes) -> FinetuneConfig:
    base = dict(steps=2, batch_size=4, lr=1e-3, warmup_steps=0, output_dir=str(tmp_path), device="cpu",
                progress=False, save_every=100)
    return FinetuneConfig(**{**base, **changes})


def _student():
    return linearize(make_sd3(), generator=torch.Generator().manual_seed(0))


# --- test 18 (fine-tuning part) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_one_student_forward_per_step_and_a_teacher_only_when_distilling(tmp_path, distill):
    student, teacher = _student(), make_sd3()
    adapter = tiny_adapter(make_sd3())
    with CallCounter(student) as s_count, CallCounter(teacher) as t_count:
        finetune(student, _data(), _config(tmp_path, steps=3, distill_weight=distill), teacher=teacher,
                 adapter=adapter)
    assert s_count.calls == 3 and s_count.per_call == [4, 4, 4]
    assert t_count.calls == (3 if distill > 0 else 0)


def test_loss_falls_and_everything_is_written(tmp_path):
    student = _student()
    result = finetune(student, _data(4), _config(tmp_path, steps=30, snapshot_steps=(10,)),
                      adapter=tiny_adapter(make_sd3()))
    losses = result.losses
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert (tmp_path / "transformer" / "config.json").is_file() and (tmp_path / "transformer-10").is_dir()
    assert (tmp_path / "checkpoint-30" / "trainer_state.json").is_file()
    summary = json.loads((tmp_path / "t5_train.json").read_text())
    assert summary["linearized"] and summary["result"]["steps"] == 30
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(30))


def test_resume_continues_exactly(tmp_path):
    adapter = tiny_adapter(make_sd3())
    straight = _student()
    finetune(straight, _data(), _config(tmp_path / "a", steps=4, save_every=2), adapter=adapter)
    resumed = _student()
    finetune(resumed, _data(), _config(tmp_path / "b", steps=2, save_every=2), adapter=adapter)
    again = _student()  # a fresh process would rebuild the model, then load the checkpoint
    result = finetune(again, _data(), _config(tmp_path / "b", steps=4, save_every=2, resume="auto"), adapter=adapter)
    assert result.resumed_from == 2
    a, b = straight.state_dict(), again.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert len(result.losses) == 4


def test_a_run_resumed_at_its_last_step_still_reports_its_timing(tmp_path):
    # demo --train resumes finished runs and only evaluates: s/step comes from the log, not from this call.
    adapter = tiny_adapter(make_sd3())
    first = finetune(_student(), _data(), _config(tmp_path, steps=2, save_every=2), adapter=adapter)
    again = finetune(_student(), _data(), _config(tmp_path, steps=2, save_every=2, resume="auto"), adapter=adapter)
    assert again.resumed_from == 2 and again.losses == first.losses
    assert math.isfinite(again.seconds_per_step) and again.seconds_per_step == first.seconds_per_step


def test_a_finished_run_is_reused_without_its_checkpoints_unless_the_recipe_changed(tmp_path):
    # demo --train --train-only on another machine: only the transformers and logs travel, no checkpoints.
    import shutil

    adapter = tiny_adapter(make_sd3())
    trained = _student()
    first = finetune(trained, _data(), _config(tmp_path, steps=3, save_every=3, snapshot_steps=(2,)), adapter=adapter)
    for folder in tmp_path.glob("checkpoint-*"):
        shutil.rmtree(folder)
    log_before = (tmp_path / "train_log.jsonl").read_text()
    again = _student()
    reused = finetune(again, _data(), _config(tmp_path, steps=3, save_every=3, snapshot_steps=(2,), resume="auto",
                                              log_every=1), adapter=adapter)
    assert reused.resumed_from == 3 and reused.losses == first.losses and reused.final_loss == first.final_loss
    assert set(reused.snapshots) == {2} and (tmp_path / "train_log.jsonl").read_text() == log_before
    assert all(torch.equal(trained.state_dict()[k], again.state_dict()[k]) for k in trained.state_dict())
    # another lr is another recipe: trained again from step 0
    other = finetune(_student(), _data(), _config(tmp_path, steps=3, save_every=3, snapshot_steps=(2,),
                                                  resume="auto", lr=2e-3), adapter=adapter)
    assert other.resumed_from is None and other.losses[0] == first.losses[0] and other.losses != first.losses


def test_softmax_baseline_uses_the_same_loop(tmp_path):
    model = make_sd3()
    before = copy.deepcopy(model.state_dict())
    finetune(model, _data(), _config(tmp_path), adapter=tiny_adapter(make_sd3()))
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the last block's text query never reaches the loss: frozen, so unchanged
    name = "transformer_blocks.1.attn.add_q_proj.weight"
    assert torch.equal(before[name], after[name])


def test_teacher_sharing_weights_with_the_student_is_refused(tmp_path):
    base = make_sd3()
    student = linearize(base)  # shares the pretrained tensors with base
    with pytest.raises(ValueError, match="shares weight tensors"):
        finetune(student, _data(), _config(tmp_path, distill_weight=1.0), teacher=base,
                 adapter=tiny_adapter(make_sd3()))
    with pytest.raises(ValueError, match="teacher"):
        finetune(linearize(make_sd3()), _data(), _config(tmp_path, distill_weight=1.0),
                 adapter=tiny_adapter(make_sd3()))


def test_timestep_sampling_applies_the_scheduler_shift():
    config = FinetuneConfig()
    adapter = tiny_adapter(make_sd3())  # SD3 scheduler, shift 3
    plain = sample_sigmas(4096, config, torch.Generator().manual_seed(0))
    shifted = sample_sigmas(4096, config, torch.Generator().manual_seed(0), adapter)
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))
    assert float(plain.min()) > 0 and float(plain.max()) < 1 and abs(float(plain.median()) - 0.5) < 0.05
    uniform = sample_sigmas(4096, FinetuneConfig(timestep_sampling="uniform"), torch.Generator().manual_seed(0))
    assert abs(float(uniform.mean()) - 0.5) < 0.02


def test_config_validation():
    with pytest.raises(ValueError, match="distill_only"):
        FinetuneConfig(distill_only=True)
    with pytest.raises(ValueError, match="mixed_precision"):
        FinetuneConfig(mixed_precision="fp8")


def test_bf16_mixed_precision_and_gradient_checkpointing(tmp_path):
    student = _student()
    result = finetune(student, _data(), _config(tmp_path, steps=2, mixed_precision="bf16",
                                               gradient_checkpointing=True), adapter=tiny_adapter(make_sd3()))
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert student.gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights stay fp32


def test_image_folder_data(tmp_path):
    pytest.importorskip("transformers")
    from PIL import Image

    from t5_linearize import toy
    from t5_linearize.training import ImageFolderData

    lines = []
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (48, 40), color).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": "a red circle" if i == 0 else "a blue square"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    bundle = toy.build_bundle("toy-sd3", random_init=True)
    adapter = bundle.adapter()
    data = ImageFolderData(tmp_path, 32, adapter, cache_latents=True)
    latents, cond = data.load([0, 1, 2], adapter)
    assert latents.shape == (3, 3, 32, 32) and len(cond) == 3
    torch.testing.assert_close(latents[0], latents[2])  # row 2 wraps to image 0
    assert float(latents[0, 0].mean()) > 0.9 and float(latents[1, 2].mean()) > 0.9  # red, blue (pixel VAE)
    with pytest.raises(FileNotFoundError, match=r"metadata\.jsonl"):
        ImageFolderData(tmp_path / "nowhere", 32)


def test_self_generated_data_trains(tmp_path):
    pytest.importorskip("transformers")
    from t5_linearize import toy
    from t5_linearize.training import self_generated_data

    bundle = toy.build_bundle("toy-sd3", random_init=True, preset="ci")
    adapter = bundle.adapter()
    data = self_generated_data(adapter, ["a red circle", "a blue square", ""], height=32, width=32, steps=2,
                               batch_size=2)
    assert data.latents.shape == (3, 3, 32, 32) and torch.isfinite(data.latents).all()
    student = linearize(copy.deepcopy(bundle.denoiser), generator=torch.Generator().manual_seed(0))
    result = finetune(student, data, _config(tmp_path, steps=2, batch_size=2), adapter=adapter)
    assert len(result.losses) == 2


def test_toy_edit_data_sends_the_source_image_as_the_kontext_reference(tmp_path):
    from flowcore.toy import build
    from flowcore.toy.edits import sample_training_edit
    from t5_linearize.training import ToyEditData

    adapter = build("toy-kontext", preset="ci", random_init=True, seed=0).adapter()
    data = ToyEditData(adapter, seed=3)
    x0, cond = data.load([0, 1, 2], adapter)
    pairs = [sample_training_edit(3, i) for i in range(3)]
    assert torch.equal(x0, adapter.encode_image(torch.stack([p.target_image for p in pairs]).float()))
    assert torch.equal(cond.extra["reference"], adapter.encode_image(torch.stack([p.source_image for p in pairs])))
    assert cond.prompts is None or list(cond.prompts) == [p.instruction for p in pairs]

    seen = []
    student = linearize(adapter.denoiser, generator=torch.Generator().manual_seed(0))
    student.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True)
    finetune(student, data, _config(tmp_path, steps=1, batch_size=2, guidance=2.5), adapter=adapter)
    assert seen == [2 * x0.shape[1]], "the student must see target + reference tokens"
