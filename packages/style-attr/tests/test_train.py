"""Training under accelerate: resume, the prompt-level baseline, the toy-sd3 ControlNet, and 2 processes
(§7 test 17)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from style_attr.dataset import build_dataset
from style_attr.training import ControlNetTrainConfig, TrainConfig, train_attribute_net, train_controlnet


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "outline"
    build_dataset(path, family="outline", toy=6, renditions=2, shard_size=4, seed=0)
    return path


def _config(data, out, **kw):
    settings = {"model": "toy-unet", "random_init": True, "preset": "ci", "device": "cpu", "batch_size": 4,
                "log_every": 1, "save_every": 0, **kw}
    return TrainConfig(data=str(data), output_dir=str(out), **settings)


def _layers(path):
    return load_file(str(path / "attribute_layers.safetensors"))


def test_training_writes_a_network_and_resume_continues_exactly(toy_data, tmp_path):
    full = train_attribute_net(_config(toy_data, tmp_path / "full", steps=3))
    assert full["steps"] == 3 and full["final"]["loss_reg"] > 0
    cfg = json.loads((tmp_path / "full" / "attribute_config.json").read_text())
    assert cfg["training"]["beta"] == 5.0 and cfg["training"]["dataset_manifest_sha256"]
    log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    train_attribute_net(_config(toy_data, tmp_path / "part", steps=3, save_every=2))
    shutil.copytree(tmp_path / "part" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    train_attribute_net(_config(toy_data, tmp_path / "resumed", steps=3, resume=True))
    a, b = _layers(tmp_path / "full"), _layers(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(float(v.abs().max()) for k, v in a.items() if ".to_out." in k) > 0


def test_a_stopped_run_saved_at_its_checkpoint_keeps_its_layers_and_logged_losses(toy_data, tmp_path):
    # what scripts/device_toy_runs.sh does at a deadline: resume with --steps = the last checkpoint's step
    train_attribute_net(_config(toy_data, tmp_path / "run", steps=3, save_every=2))
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    saved = train_attribute_net(_config(toy_data, tmp_path / "run", steps=2, resume=True))
    assert saved["steps"] == 2
    assert saved["final"] == {k: v for k, v in log[1].items() if k.startswith("loss")}
    a, b = _layers(tmp_path / "run"), load_file(str(tmp_path / "run" / "checkpoint-2" / "attribute_layers.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_beta_zero_and_prompt_level_baseline_train(toy_data, tmp_path):
    res = train_attribute_net(_config(toy_data, tmp_path / "b0", steps=1, beta=0.0))
    assert res["final"]["loss_reg"] == 0.0
    train_attribute_net(_config(toy_data, tmp_path / "pl", steps=1, baseline="prompt-level"))
    from style_attr.baseline import PromptLevelBaseline

    baseline = PromptLevelBaseline.from_pretrained(tmp_path / "pl")
    assert baseline.level_tokens.shape == (1, 5, 128)
    assert PromptLevelBaseline.levels(torch.tensor([0.0, 0.19, 0.2, 0.99, 1.2])).tolist() == [0, 0, 1, 4, 4]


def test_train_controlnet_for_toy_sd3(tmp_path):
    res = train_controlnet(ControlNetTrainConfig(output_dir=str(tmp_path / "cn"), steps=1, batch_size=2,
                                                 random_init=True, device="cpu", train_scenes=8))
    assert (tmp_path / "cn" / "config.json").is_file() and res["steps"] == 1
    from diffusers import SD3ControlNetModel

    net = SD3ControlNetModel.from_pretrained(tmp_path / "cn")
    assert net.config.num_layers == 3  # toy-sd3 has 4 blocks; the last is context_pre_only


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(toy_data, tmp_path):
    """Test 17: torchrun with 2 CPU processes (gloo), 3 steps at global batch 4, gives the trainable parameters of
    1 process at batch 4 (≤ 1e-6); only rank 0 writes."""
    train_attribute_net(_config(toy_data, tmp_path / "one", steps=3))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "style_attr", "train",
           "--data", str(toy_data), "--random-init", "--preset", "ci", "--steps", "3", "--batch-size", "4",
           "--output-dir", str(tmp_path / "two"), "--device", "cpu", "--save-every", "0", "--log-every", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _layers(tmp_path / "one"), _layers(tmp_path / "two")
    assert set(one) == set(two)
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-6
    assert max(float(v.abs().max()) for k, v in one.items() if ".to_out." in k) > 1e-5  # training moved W_o
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2
    log = (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3]  # one writer
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_bad_training_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="reg_weighting"):
        TrainConfig(data="x", output_dir="y", reg_weighting="cubic")
    with pytest.raises(ValueError, match="beta"):
        TrainConfig(data="x", output_dir="y", beta=-1)
    with pytest.raises(ValueError, match="anchor_reference needs reg_input='paired'"):
        TrainConfig(data="x", output_dir="y", reg_input="shared", anchor_reference=True)
    # the anchor follows the regulariser input unless set
    assert TrainConfig(data="x", output_dir="y").anchor_reference is True
    assert TrainConfig(data="x", output_dir="y", reg_input="shared").anchor_reference is False
    from style_attr.dataset import DatasetError

    with pytest.raises(DatasetError, match="build-dataset"):
        train_attribute_net(_config(tmp_path / "none", tmp_path / "out", steps=1))
