"""Shared command-line conventions (architecture §2): common flags, model/device/dtype resolution, output.

Every method package's CLI calls :func:`add_common_args` so that ``--model``, ``--output-dir``, ``--seed``,
``--device``, ``--dtype`` and ``--json [PATH]`` mean the same everywhere, and ends with :func:`emit`.
:func:`run_cli` is the common ``main``: dispatch to the subcommand, map errors to the exit codes
:data:`EXIT_OK` (0), :data:`EXIT_USER_ERROR` (1, bad input) and :data:`EXIT_MISSING_WEIGHTS` (2), then emit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

__all__ = [
    "EXIT_MISSING_WEIGHTS",
    "EXIT_OK",
    "EXIT_USER_ERROR",
    "TOY_MODELS",
    "USER_ERRORS",
    "ModelRef",
    "add_common_args",
    "emit",
    "format_summary",
    "progress",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "run_cli",
]

from flowcore.io import TOY_MODEL_NAMES as TOY_MODELS  # toy-sd3, toy-flux, toy-kontext, toy-unet, toy-clip

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
EXIT_OK, EXIT_USER_ERROR, EXIT_MISSING_WEIGHTS = 0, 1, 2
# Errors that mean "the input was wrong" (the message says what to fix); packages may add their own.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _toy_names() -> tuple[str, ...]:
    """The toy names: flowcore.toy.available() once the toy world provides it, else the fixed list."""
    try:
        from flowcore import toy

        available = getattr(toy, "available", None)
        if callable(available):
            return tuple(dict.fromkeys([*available(), *TOY_MODELS]))
    except ImportError:
        pass
    return TOY_MODELS


# -------------------------------------------------------------------------------------------------- flags
class _ReplaceDefaultAppend(argparse.Action):
    """``append`` whose first use replaces the default list instead of extending it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        if current is self.default or current is None:
            current = []
        setattr(namespace, self.dest, [*current, values])


def _device_arg(value: str) -> str:
    value = value.strip().lower()
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"invalid device {value!r}; use auto, cpu, cuda, cuda:N or mps")


def _dtype_arg(value: str) -> str:
    key = value.strip().lower()
    if key not in _DTYPES:
        raise argparse.ArgumentTypeError(f"invalid dtype {value!r}; use float32, float16 or bfloat16")
    return str(_DTYPES[key]).removeprefix("torch.")


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    default_model: str | Sequence[str] | None,
    multiple_models: bool = False,
    default_output_dir: str | os.PathLike | None = None,
    default_seed: int = 0,
) -> None:
    """Add ``--model --output-dir --seed --device --dtype --json [PATH]`` to ``parser``.

    - ``--model``: toy name, hub id or local path (check it with :func:`resolve_model`). With
      ``multiple_models=True`` it may be repeated and ``args.model`` is a list (``default_model`` may then be a
      list, e.g. all the package's toys; giving ``--model`` replaces the default rather than adding to it).
    - ``--output-dir`` (``Path``, default ``default_output_dir``), ``--seed`` (int, default 0).
    - ``--device``: ``auto|cpu|cuda|cuda:N|mps`` (default auto; see :func:`resolve_device`).
    - ``--dtype``: ``float32|float16|bfloat16`` (aliases fp32/fp16/bf16 are normalised; default float32).
    - ``--json [PATH]``: ``args.json`` is ``None`` (off), ``"-"`` (JSON on stdout) or the path to write.
    """
    if multiple_models:
        default = [default_model] if isinstance(default_model, str) else list(default_model or []) or None
        parser.add_argument(
            "--model", action=_ReplaceDefaultAppend, default=default, metavar="MODEL",
            help="toy name (e.g. toy-sd3), hub id or local path; repeat for several (default: %(default)s)",
        )
    else:
        if default_model is not None and not isinstance(default_model, str):
            raise TypeError("default_model must be one name unless multiple_models=True")
        parser.add_argument(
            "--model", default=default_model, metavar="MODEL",
            help="toy name (e.g. toy-sd3), hub id or local path (default: %(default)s)",
        )
    parser.add_argument(
        "--output-dir", type=Path, default=Path(default_output_dir) if default_output_dir is not None else None,
        metavar="DIR", help="folder for the files this command writes (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=default_seed, help="random seed (default: %(default)s)")
    parser.add_argument("--device", type=_device_arg, default="auto",
                        help="auto | cpu | cuda | cuda:N | mps (default: auto)")
    parser.add_argument("--dtype", type=_dtype_arg, default="float32",
                        help="float32 | float16 | bfloat16 (default: float32)")
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="PATH",
        help="machine-readable summary: on stdout without PATH (human output then goes to stderr), "
        "or written atomically to PATH",
    )


# ------------------------------------------------------------------------------------------------ resolving
@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from. ``kind``: ``"toy"`` (``name`` is a toy name, ``path`` None), ``"hub"``
    (``name`` is ``org/name``) or ``"local"`` (``path`` is the existing folder/file, ``name`` its string)."""

    kind: Literal["toy", "hub", "local"]
    name: str
    path: Path | None = None

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"

    def __str__(self) -> str:
        return self.name


def resolve_model(spec: str) -> ModelRef:
    """Classify a ``--model`` value: a toy name, an existing local path, or a hub id ``org/name``.

    Order: toy names first (case-insensitive), then existing paths, then hub ids. A value that looks like a
    path (starts with ``/``, ``.``, ``~`` or contains a backslash) but does not exist, or that is none of the
    three, raises ``ValueError`` listing the toy names.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    toys = _toy_names()
    if spec.lower() in toys:
        return ModelRef("toy", spec.lower())
    path = Path(spec).expanduser()
    if path.exists():
        return ModelRef("local", str(path), path.resolve())
    looks_like_path = spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1
    if not looks_like_path and _HUB_ID.match(spec):
        return ModelRef("hub", spec)
    reason = f"path {str(path)!r} does not exist" if looks_like_path else "it is not a hub id of the form org/name"
    raise ValueError(
        f"unknown model {spec!r}: {reason}. Use a toy name ({', '.join(toys)}), an existing local path, "
        "or a hub id such as stabilityai/stable-diffusion-3.5-medium"
    )


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA if available, else MPS if available, else CPU; explicit devices are checked."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available here; use --device cpu or auto")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match:
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device(name)
    raise ValueError(f"invalid device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32|float16|bfloat16`` (or fp32/fp16/bf16/half/float, or a ``torch.dtype``) → ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"invalid dtype {name!r}; use float32, float16 or bfloat16")
    return _DTYPES[key]


# --------------------------------------------------------------------------------------------------- output
def _flatten(summary: dict, prefix: str = "") -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rows_table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]
    return lines


def format_summary(summary: dict) -> str:
    """Human-readable text: ``key: value`` lines (nested dicts dotted), lists of dicts as aligned tables."""
    scalars = [(k, v) for k, v in _flatten(summary)
               if not (isinstance(v, list) and v and all(isinstance(r, dict) for r in v))]
    tables = [(k, v) for k, v in _flatten(summary)
              if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    width = max((len(key) for key, _ in scalars), default=0)
    lines = [f"{key.ljust(width)}  {_cell(value)}" for key, value in scalars]
    for key, rows in tables:
        lines += ["", f"{key}:", *("  " + line for line in _rows_table(rows))]
    return "\n".join(lines)


def emit(args: argparse.Namespace, summary: dict) -> None:
    """Report a command's summary.

    Without ``--json``: the human table on stdout. ``--json`` alone: JSON on stdout and the table on stderr (so
    stdout stays machine-readable). ``--json PATH``: the table on stdout and the JSON written atomically to PATH.
    """
    from flowcore.io import to_jsonable, write_json

    target = getattr(args, "json", None)
    text = format_summary(summary)
    if target is None:
        print(text, file=sys.stdout)
    elif target == "-":
        print(text, file=sys.stderr)
        print(json.dumps(to_jsonable(summary), indent=2, ensure_ascii=False, allow_nan=False), file=sys.stdout)
    else:
        write_json(target, summary)
        print(text, file=sys.stdout)
        print(f"wrote {target}", file=sys.stdout)
    sys.stdout.flush()


def progress(iterable: Iterable, **kwargs):
    """``tqdm`` progress bar on stderr, disabled when stderr is not a terminal or ``FLOWCORE_NO_PROGRESS=1``.

    Keyword arguments go to ``tqdm`` (``disable=True`` forces it off).
    """
    from tqdm import tqdm

    disabled = (
        bool(kwargs.pop("disable", False))
        or os.environ.get("FLOWCORE_NO_PROGRESS", "") == "1"
        or not sys.stderr.isatty()
    )
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disabled, **kwargs)


# ------------------------------------------------------------------------------------------------------ main
def _error_text(err: BaseException) -> str:
    """The message of ``err``; a ``KeyError``'s own message rather than its quoted repr."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def run_cli(
    prog: str,
    parser: argparse.ArgumentParser,
    commands: Mapping[str, Callable[[argparse.Namespace], dict]],
    argv: Sequence[str] | None = None,
    *,
    user_errors: Sequence[type[BaseException]] = USER_ERRORS,
    extra_missing: Sequence[type[BaseException]] = (),
    missing_label: str = "missing weights",
    missing_hint: str | None = None,
    report: Callable[[argparse.Namespace, dict], None] = emit,
) -> int:
    """A package's ``main``: parse ``argv``, run ``commands[args.command](args)``, report it; return the exit code.

    - ``flowcore.toy.ToyWeightsMissing`` and the ``extra_missing`` types → one line
      ``"<prog> <command>: <missing_label>: <message>"`` (plus ``"  (<missing_hint>)"`` when given) on stderr and
      :data:`EXIT_MISSING_WEIGHTS`. Checked first, so a missing-weights error that is also a ``FileNotFoundError``
      is not reported as bad input.
    - ``user_errors`` → ``"<prog> <command>: error: <message>"`` on stderr and :data:`EXIT_USER_ERROR`.
    - Otherwise ``report(args, summary)`` (default :func:`emit`) and :data:`EXIT_OK`. Anything else propagates
      (a bug keeps its traceback); argparse errors exit 2 from ``parse_args`` as usual.
    """
    from flowcore.toy.bundle import ToyWeightsMissing

    args = parser.parse_args(argv)
    where = f"{prog} {args.command}"
    try:
        summary = commands[args.command](args)
    except (ToyWeightsMissing, *extra_missing) as err:
        print(f"{where}: {missing_label}: {err}", file=sys.stderr)
        if missing_hint:
            print(f"  ({missing_hint})", file=sys.stderr)
        return EXIT_MISSING_WEIGHTS
    except tuple(user_errors) as err:
        print(f"{where}: error: {_error_text(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    report(args, summary)
    return EXIT_OK
