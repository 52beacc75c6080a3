"""flowcore.cli: shared flags, model/device/dtype resolution, summary output, progress bars."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import torch

from flowcore.cli import (
    EXIT_MISSING_WEIGHTS,
    EXIT_OK,
    EXIT_USER_ERROR,
    ModelRef,
    add_common_args,
    emit,
    progress,
    resolve_device,
    resolve_dtype,
    resolve_model,
    run_cli,
)
from flowcore.toy import ToyWeightsMissing


def _parser(**kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_common_args(parser, **kw)
    return parser


def test_common_args_defaults_and_values():
    args = _parser(default_model="toy-sd3", default_output_dir="outputs/pkg/demo").parse_args([])
    assert args.model == "toy-sd3" and args.output_dir == Path("outputs/pkg/demo") and args.seed == 0
    assert args.device == "auto" and args.dtype == "float32" and args.json is None
    args = _parser(default_model=None).parse_args(
        ["--model", "org/m", "--output-dir", "o", "--seed", "5", "--device", "CUDA:1", "--dtype", "bf16", "--json"]
    )
    assert (args.model, args.output_dir, args.seed, args.device, args.dtype, args.json) == (
        "org/m", Path("o"), 5, "cuda:1", "bfloat16", "-")
    assert _parser(default_model=None).parse_args(["--json", "s.json"]).json == "s.json"


@pytest.mark.parametrize("argv", [["--device", "gpu"], ["--dtype", "int8"], ["--seed", "x"]])
def test_common_args_reject_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        _parser(default_model=None).parse_args(argv)
    assert "invalid" in capsys.readouterr().err


def test_repeatable_model_replaces_default():
    parser = _parser(default_model=["toy-sd3", "toy-flux"], multiple_models=True)
    assert parser.parse_args([]).model == ["toy-sd3", "toy-flux"]
    assert parser.parse_args(["--model", "toy-flux"]).model == ["toy-flux"]
    assert parser.parse_args(["--model", "a/b", "--model", "toy-sd3"]).model == ["a/b", "toy-sd3"]
    assert parser.parse_args([]).model == ["toy-sd3", "toy-flux"]  # the default list was not mutated
    with pytest.raises(TypeError, match="multiple_models"):
        _parser(default_model=["a", "b"])


def test_resolve_model_kinds(tmp_path):
    assert resolve_model("toy-sd3") == ModelRef("toy", "toy-sd3")
    assert resolve_model("TOY-Kontext").is_toy
    assert resolve_model("toy-clip").kind == "toy"
    assert resolve_model("stabilityai/stable-diffusion-3.5-medium") == ModelRef(
        "hub", "stabilityai/stable-diffusion-3.5-medium")
    local = resolve_model(str(tmp_path))
    assert local.kind == "local" and local.path == tmp_path.resolve()


@pytest.mark.parametrize("spec", ["./missing/model", "/abs/missing", "sd3-medium", "a/b/c", "toy-sdxl", ""])
def test_resolve_model_errors_are_clear(spec):
    with pytest.raises(ValueError, match="toy-sd3") if spec else pytest.raises(ValueError, match="non-empty"):
        resolve_model(spec)


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        expected = "mps" if mps is not None and mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu")
    assert resolve_dtype("fp16") is torch.float16 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float32") is torch.float32 and resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="invalid dtype"):
        resolve_dtype("float8")


_SUMMARY = {"model": "toy-sd3", "psnr": 41.23456, "nested": {"a": 1},
            "rows": [{"method": "ours", "score": 0.9}, {"method": "base", "score": 0.7}]}


def test_emit_human_only(capsys):
    emit(argparse.Namespace(json=None), _SUMMARY)
    out, err = capsys.readouterr()
    assert "psnr" in out and "41.23" in out and "nested.a" in out and err == ""
    assert "method" in out and "ours" in out  # the list of rows is a table


def test_emit_json_on_stdout(capsys):
    emit(argparse.Namespace(json="-"), {**_SUMMARY, "bad": float("inf")})
    out, err = capsys.readouterr()
    assert json.loads(out)["rows"][0]["method"] == "ours" and json.loads(out)["bad"] == "inf"
    assert "psnr" in err  # the human table moved to stderr


def test_emit_json_to_path(tmp_path, capsys):
    target = tmp_path / "deep" / "summary.json"
    emit(argparse.Namespace(json=str(target)), _SUMMARY)
    assert json.loads(target.read_text())["psnr"] == pytest.approx(41.23456)
    assert "psnr" in capsys.readouterr().out


def test_progress_disabled_off_tty_and_by_env(monkeypatch):
    monkeypatch.delenv("FLOWCORE_NO_PROGRESS", raising=False)  # other test folders' conftests set it
    bar = progress(range(3))  # pytest captures stderr: not a terminal
    assert bar.disable and list(bar) == [0, 1, 2]

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", _Tty())
    assert not progress(range(2)).disable
    monkeypatch.setenv("FLOWCORE_NO_PROGRESS", "1")
    assert progress(range(2)).disable


# ------------------------------------------------------------------------------------------------ run_cli
class _AssetGone(Exception):
    pass


def _cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pkg")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ok", "bad", "nofile", "key", "toy", "asset", "bug"):
        add_common_args(sub.add_parser(name), default_model=None)
    return parser


def _raiser(err: BaseException):
    def command(args):
        raise err

    return command


_COMMANDS = {
    "ok": lambda args: {"answer": 42},
    "bad": _raiser(ValueError("height must be a multiple of 16")),
    "nofile": _raiser(FileNotFoundError("image file not found: x.png")),
    "key": _raiser(KeyError("unknown attribute 'grain'")),
    "toy": _raiser(ToyWeightsMissing("no shipped weights for 'toy-sd3'")),
    "asset": _raiser(_AssetGone("the ControlNet asset is not committed")),
    "bug": _raiser(ZeroDivisionError("a bug")),
}


def _run(argv, **kw):
    return run_cli("pkg", _cli_parser(), _COMMANDS, argv, **kw)


def test_run_cli_success_emits_the_summary(capsys):
    assert _run(["ok"]) == EXIT_OK == 0
    assert "answer" in capsys.readouterr().out
    assert _run(["ok", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"answer": 42}
    seen = []
    assert _run(["ok"], report=lambda args, summary: seen.append((args.command, summary))) == EXIT_OK
    assert seen == [("ok", {"answer": 42})] and capsys.readouterr().out == ""


@pytest.mark.parametrize("command, message", [
    ("bad", "pkg bad: error: height must be a multiple of 16"),
    ("nofile", "pkg nofile: error: image file not found: x.png"),
    ("key", "pkg key: error: unknown attribute 'grain'"),  # the message, not KeyError's quoted repr
])
def test_run_cli_user_errors_exit_1_with_one_line(command, message, capsys):
    assert _run([command], user_errors=(ValueError, FileNotFoundError, KeyError)) == EXIT_USER_ERROR == 1
    out, err = capsys.readouterr()
    assert err == message + "\n" and out == ""


def test_run_cli_missing_weights_exit_2(capsys):
    assert _run(["toy"]) == EXIT_MISSING_WEIGHTS == 2  # a FileNotFoundError, yet not reported as bad input
    assert capsys.readouterr().err == "pkg toy: missing weights: no shipped weights for 'toy-sd3'\n"
    code = _run(["asset"], extra_missing=(_AssetGone,), missing_label="the trained weights are missing",
                missing_hint="use --random-init for a plumbing check")
    assert code == EXIT_MISSING_WEIGHTS
    assert capsys.readouterr().err == ("pkg asset: the trained weights are missing: the ControlNet asset is not "
                                       "committed\n  (use --random-init for a plumbing check)\n")


def test_run_cli_lets_other_errors_propagate(capsys):
    with pytest.raises(KeyError):  # not a user error unless the package says so
        _run(["key"])
    with pytest.raises(_AssetGone):
        _run(["asset"])
    with pytest.raises(ZeroDivisionError):
        _run(["bug"], user_errors=(ValueError, FileNotFoundError, KeyError))
    with pytest.raises(SystemExit) as exc:  # argparse's own usage errors
        _run(["nope"])
    assert exc.value.code == 2
