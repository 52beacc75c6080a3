"""The command line: convert → finetune → generate on a random-init toy-sd3, bench smoke runs, demo exit codes."""

from __future__ import annotations

import json

import pytest

from t5_linearize.cli import build_parser, main


def test_help_explains_every_flag(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_convert_finetune_generate_on_a_random_toy(tmp_path, monkeypatch):
    pytest.importorskip("transformers")  # the toy pipeline is diffusers' StableDiffusion3Pipeline
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--model", "toy-sd3", "--random-init", "--output-dir", "t5", "--json", "conv.json"]) == 0
    record = json.loads((tmp_path / "t5" / "t5_linearize.json").read_text())
    assert record["new_parameters"] == record["new_parameters_formula"] > 0
    assert len(record["linearized_sites"]) == 5  # toy-sd3: 4 joint + 1 attn2
    assert main(["finetune", "--model", "toy-sd3", "--random-init", "--transformer", "t5", "--steps", "2",
                 "--batch-size", "2", "--warmup-steps", "0", "--output-dir", "ft", "--device", "cpu"]) == 0
    assert (tmp_path / "ft" / "transformer" / "config.json").is_file()
    assert json.loads((tmp_path / "ft" / "t5_train.json").read_text())["linearized"]
    assert main(["generate", "--model", "toy-sd3", "--random-init", "--transformer", "ft/transformer", "--prompt",
                 "a red circle", "--steps", "2", "--backend", "torch", "--output-dir", "gen"]) == 0
    sidecar = json.loads((tmp_path / "gen" / "t5.json").read_text())
    assert sidecar["backend_used"] == "torch" and sidecar["ttt_config"]["operator"] == "ttt"
    assert (tmp_path / "gen" / "t5.png").is_file()


def test_finetune_refuses_ambiguous_input(tmp_path, capsys):
    code = main(["finetune", "--model", "toy-sd3", "--random-init", "--output-dir", str(tmp_path)])
    assert code == 1 and "--softmax-baseline" in capsys.readouterr().err


def test_demo_without_assets_or_weights_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(tmp_path / "no-weights"))
    import t5_linearize.demo as demo

    monkeypatch.setattr(demo, "assets_dir", lambda: tmp_path / "no-assets")
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "out")]) == 2
    assert "demo --train" in capsys.readouterr().err
    assert main(["demo", "--train", "--output-dir", str(tmp_path / "out")]) == 2
    assert "toy-sd3" in capsys.readouterr().err
    assert main(["eval-toy", "--transformer", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2


def test_bench_layer_and_block_smoke(tmp_path, capsys):
    assert main(["bench", "layer", "--sizes", "40", "--dtypes", "float32", "--repeats", "1", "--threads", "1",
                 "--output-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_layer.json").read_text())["rows"]
    assert {r["provider"] for r in rows} == {"sdpa", "ttt_core", "ttt_full"}
    assert {r["op"] for r in rows} == {"layer/forward", "layer/forward+backward"}
    assert "ratio" in capsys.readouterr().out
    from t5_linearize.bench import run_block, run_transformer

    block = run_block([40], repeats=1, width=64, heads=2, head_dim=32, duals=(False, True))
    assert {r["provider"] for r in block} == {"softmax", "ttt"} and all(r["ms_p50"] > 0 for r in block)
    b3 = run_transformer([], [], device="cpu", tiny=True, repeats=1, out_dir=tmp_path)
    assert {r["provider"] for r in b3} == {"sdpa", "ttt_torch"}
    assert (tmp_path / "bench_transformer.csv").is_file()


def test_demo_train_ci_smoke(tmp_path):
    """The 50-step CI version of the protocol (spec §6): finite outputs and a falling loss only."""
    pytest.importorskip("transformers")
    assert main(["demo", "--train", "--preset", "ci", "--no-export", "--output-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("T5", "softmax", "linear"):
        run = report["training"][name]
        assert run["finite"] and run["last_loss_mean"] < run["first_loss_mean"]
    assert set(report["models"]) == {"original", "T5@0", "ft-softmax", "T5@25", "T5@50", "linear@25"}
    assert all(m["finite"] for m in report["models"].values())
    assert set(report["acceptance"]) == {"A1", "A2", "A3", "A4"}  # computed, not asserted at CI size
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "report.md").is_file()


def test_demo_train_only_runs_made_elsewhere_are_reused_without_checkpoints(tmp_path):
    """--train-only on two machines, then one --train over the gathered transformers and logs = one straight run."""
    pytest.importorskip("transformers")
    import shutil

    straight, here, there = tmp_path / "straight", tmp_path / "here", tmp_path / "there"
    args = ["demo", "--train", "--preset", "ci", "--no-export"]
    assert main([*args, "--output-dir", str(straight)]) == 0
    assert main([*args, "--train-only", "t5", "--output-dir", str(here)]) == 0
    assert main([*args, "--train-only", "softmax", "linear", "--output-dir", str(there)]) == 0
    assert not (here / "report.json").exists() and not (here / "softmax").exists()
    for run in ("softmax", "linear"):
        shutil.copytree(there / run, here / run)
    for checkpoint in here.glob("*/checkpoint-*"):
        shutil.rmtree(checkpoint)
    assert main([*args, "--output-dir", str(here)]) == 0
    assert not list(here.glob("*/checkpoint-*"))  # nothing trained again
    got, want = (json.loads((d / "report.json").read_text()) for d in (here, straight))
    for name in ("T5", "softmax", "linear"):
        assert got["training"][name]["final_loss"] == want["training"][name]["final_loss"]
    assert got["models"] == want["models"] and got["acceptance"] == want["acceptance"]


def test_demo_evaluates_committed_assets(tmp_path, monkeypatch):
    """`demo` without training, on stand-in assets (random toy weights until the real ones land)."""
    pytest.importorskip("transformers")
    import copy

    import torch

    from t5_linearize import demo, linearize, toy

    bundle = toy.build_bundle("toy-sd3", random_init=True)
    monkeypatch.setattr(toy, "load_bundle", lambda name="toy-sd3", **kw: bundle)
    assets = tmp_path / "assets"
    t5 = linearize(copy.deepcopy(bundle.denoiser), generator=torch.Generator().manual_seed(0))
    t5.to(torch.float16).save_pretrained(assets / demo.T5_ASSET)
    copy.deepcopy(bundle.denoiser).to(torch.float16).save_pretrained(assets / demo.SOFTMAX_ASSET)
    (assets / demo.RECORD_ASSET).write_text('{"training": {"T5": {"steps": 7}}}')  # labels T5 by its real steps
    report = demo.run_demo(tmp_path / "out", assets=assets, n_prompts=2, sample_steps=2, progress=False)
    assert set(report["models"]) == {"original", "ft-softmax", "T5@7"}
    assert set(report["pairs"]) == {"T5@7 vs ft-softmax", "T5@7 vs original", "ft-softmax vs original"}
    assert {"A1", "A2"} <= set(report["acceptance"])
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "grid.png").is_file()
