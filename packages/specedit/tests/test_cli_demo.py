"""The CLI (flops, edit, demo exit codes) and the demonstration's mechanics on a random-init toy."""

from __future__ import annotations

import json

import pytest
import torch

from specedit.cli import build_parser, main


def test_help_of_every_command(capsys):
    for command in ("edit", "compare", "flops", "calibrate", "demo", "bench"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([command, "--help"])
        assert exc.value.code == 0
    assert "--reference-policy" in capsys.readouterr().out


def test_flops_command_prints_the_table(tmp_path, capsys):
    path = tmp_path / "flops.json"
    assert main(["flops", "--arch", "both", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    rows = {r["nfe"]: r for r in data["flux-kontext-dev"]["rows"]}
    assert rows[9]["paper"] == 7.37 and abs(rows[9]["full@0.118"] - 7.70) < 0.01
    assert data["qwen-image-edit"]["rows"][-1]["paper"] == 10.94
    assert data["flux-kontext-dev"]["bound_full_reference"] == {"18": 4.54, "30": 2.79}
    assert "explanation" in data["qwen-image-edit"]
    assert "nfe" in capsys.readouterr().out


def test_edit_on_random_toy_writes_png_and_sidecar(tmp_path):
    from flowcore.images import to_pil

    image = tmp_path / "src.png"
    to_pil(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))[0].save(image)
    out = tmp_path / "out"
    rc = main(["edit", "--random-init", "--image", str(image), "--prompt", "make the circle red", "--steps", "5",
               "--save-maps", "--output-dir", str(out), "--name", "e", "--json", str(tmp_path / "s.json")])
    assert rc == 0
    side = json.loads((out / "e.json").read_text())
    assert side["world"] == "toy" and side["specedit"]["num_steps"] == 5
    assert {"e.png", "e.mask.png", "e.S.png", "e.draft.png"} <= set(side["outputs"])
    assert "specedit" in side["versions"]


def test_demo_and_edit_exit_2_when_toy_weights_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWCORE_TOY_WEIGHTS", str(tmp_path / "no-weights"))
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "weights are missing" in err and "toy-kontext" in err and "train" in err
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["edit", "--image", str(image), "--prompt", "p", "--output-dir", str(tmp_path / "e")]) == 2


def test_bad_cli_values_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "--image", "x", "--prompt", "p", "--draft-factor", "3"])
    assert main(["flops", "--height", "1000"]) == 1
    assert "multiples of 16" in capsys.readouterr().err


def _ci_bundle():
    from specedit import toy

    return toy.build_bundle("toy-kontext", preset="ci")


def test_demo_quick_mechanics_on_random_toy(tmp_path):
    from specedit.demo import DemoSettings, run_demo, write_report

    report = run_demo(DemoSettings(pairs=1, quick=True, threads=None), bundle=_ci_bundle())
    names = [r["method"] for r in report["rows"]]
    assert names == ["full-50", "specedit-18"]
    row = report["rows"][1]
    assert row["wall_ratio"] is not None and row["flop_ratio"] is not None and 0 < row["rho_mean"] <= 1
    assert report["flop_crosscheck"]["equal"]
    paths = write_report(report, tmp_path)
    assert (tmp_path / "demo.md").read_text().startswith("| method")
    assert len(paths) == 3 and "_gallery_images" not in report
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:  # one pair: source, target, full-50, SpecEdit, fine cells
        assert grid.size == (5 * 32, 32)
    assert report["gallery"]["columns"][3] == "SpecEdit" and len(report["gallery"]["pairs"]) == 1


@pytest.mark.slow
def test_demo_full_rows_and_acceptance_on_random_toy():
    from specedit.demo import DemoSettings, run_demo

    settings = DemoSettings(pairs=2, timing_pairs=2, warmup=0, nfes=(11, 9), threads=None)
    report = run_demo(settings, bundle=_ci_bundle())
    names = {r["method"] for r in report["rows"]}
    for nfe in (11, 9):
        assert {f"specedit-{nfe}", f"plain-{nfe}", f"plain-eqtime-{nfe}", f"specedit-mirror-{nfe}"} <= names
    assert report["injected_mask_bitwise_equal"] is True
    assert set(report["acceptance"]) == {"T1", "T2", "T3", "T4"}
    assert set(report["equal_time_steps"]) == {11, 9}
