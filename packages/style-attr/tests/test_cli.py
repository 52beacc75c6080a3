"""The ``style-attr`` command line: help, missing toy weights (exit 2), a random-toy sweep, bad input."""

from __future__ import annotations

import json

import pytest

from style_attr.cli import build_parser, main

COMMANDS = ["build-dataset", "dataset", "train-controlnet", "train", "generate", "sweep", "invert", "edit", "demo",
            "eval-toy", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--output-dir", "--seed", "--device", "--dtype", "--json"):
        assert flag in text


def test_demo_without_toy_weights_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(tmp_path / "no-weights"))
    code = main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")])
    assert code == 2
    assert "missing weights" in capsys.readouterr().err


def test_sweep_on_a_random_toy_writes_images_strip_and_sidecar(tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "--random-init", "--preset", "ci", "--prompt", "a red circle", "--self-edges",
                 "--sweep", "width=0:1:0.5", "--steps", "3", "--output-dir", str(out), "--json", str(tmp_path / "s.json")])
    assert code == 0
    sidecar = json.loads((out / "sweep.json").read_text())
    assert sidecar["sweep"] == {"param": "width", "values": [0.0, 0.5, 1.0]}
    assert "sweep.strip.png" in sidecar["outputs"] and (out / "sweep-2.png").is_file()
    assert sidecar["networks"] and sidecar["w1"] == 7.5 and sidecar["act_t"] == 0.1
    assert json.loads((tmp_path / "s.json").read_text())["images"] == 3


def test_bad_slider_input_is_a_clear_error(tmp_path, capsys):
    base = ["generate", "--random-init", "--preset", "ci", "--prompt", "a red circle", "--self-edges", "--steps", "2",
            "--output-dir", str(tmp_path)]
    assert main([*base, "--set", "width=9"]) == 1
    assert "allowed range" in capsys.readouterr().err
    assert main([*base, "--set", "granulation=0.5"]) == 1
    assert "not one a loaded network was trained on" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        main([*base, "--set", "width"])


@pytest.mark.parametrize(("argv", "scenes", "inversion_scenes"), [
    (["--quick"], 4, 2), (["--quick", "--scenes", "12"], 12, 2), ([], 64, 16), (["--scenes", "8"], 8, 16)])
def test_eval_toy_scene_count_follows_scenes_also_with_quick(tmp_path, monkeypatch, argv, scenes, inversion_scenes):
    import style_attr.evaluate as evaluate

    calls = []

    def fake_evaluate_toy(name, net, **kwargs):
        calls.append(kwargs)
        return {"model": name, "scenes": kwargs["scenes"], "strips": []}

    monkeypatch.setattr(evaluate, "evaluate_toy", fake_evaluate_toy)
    code = main(["eval-toy", "--model", "toy-sd3", *argv, "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    assert [(c["scenes"], c["inversion_scenes"]) for c in calls] == [(scenes, inversion_scenes)]
    assert calls[0]["lams"] == (evaluate.QUICK_GRID if "--quick" in argv else evaluate.FULL_GRID)
