"""Developer tasks. Every session installs ``torch==2.13.0`` first (a CPU wheel; never a CUDA build), then the
monorepo's distributions with pip (never uv).

    nox -s tests         everything CI runs (fast CPU tests + Triton interpreter kernel tests)
    nox -s lint          ruff
    nox -s typecheck     mypy on the core and kernels
    nox -s isolated      each distribution alone in a fresh venv with only its declared dependencies
    nox -s demo          the toy-world demo of every method, report in demo-output/index.html
    nox -s bench         the benchmarks (ratios side by side; pass -- --device cuda on a GPU)
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TORCH = os.environ.get("FLOWCORE_TORCH_SPEC", "torch==2.13.0")
CORE = ["shared", "kernels"]
PACKAGES = {
    "flowcore": "shared",
    "flowkernels": "kernels",
    "t5-linearize": "packages/t5-linearize",
    "directedit": "packages/directedit",
    "specedit": "packages/specedit",
    "style-attr": "packages/style-attr",
    "feat-tryon": "packages/feat-tryon",
}
METHODS = ["t5-linearize", "directedit", "specedit", "style-attr", "feat-tryon"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def _install_torch(session: nox.Session) -> None:
    session.install("--upgrade", "pip")
    session.install(TORCH)


def _install_all(session: nox.Session, *extra: str) -> None:
    """torch first, then every distribution editable in ONE pip call so local names resolve to local folders."""
    _install_torch(session)
    args: list[str] = []
    for folder in [*CORE, *(f"packages/{m}" for m in METHODS)]:
        args += ["-e", folder]
    session.install(*args, "transformers>=4.40", "triton", *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Fast CPU tests of every distribution plus the Triton interpreter kernel tests (what CI runs)."""
    _install_all(session, "pytest>=8", "pytest-xdist", "hypothesis")
    env = {**OFFLINE, "OMP_NUM_THREADS": "2"}
    workers = os.environ.get("FLOWCORE_TEST_WORKERS", "2")
    session.run("pytest", "-n", workers, "--dist", "loadfile", *session.posargs, env=env)
    # Triton kernels run under the interpreter in a separate process (TRITON_INTERPRET must be set before import).
    session.run("pytest", "kernels/tests", "-m", "kernels", "-q", env={**env, "TRITON_INTERPRET": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install_all(session, "mypy")
    session.run("mypy", "shared/src/flowcore", "kernels/src/flowkernels")


@nox.session
@nox.parametrize("package", list(PACKAGES))
def isolated(session: nox.Session, package: str) -> None:
    """One distribution alone: only its declared dependencies (local ones from their folders), its smallest test."""
    _install_torch(session)
    folder = PACKAGES[package]
    local_deps = {"t5-linearize": ["shared", "kernels"]}.get(package, [] if package in CORE_NAMES else ["shared"])
    for dep in local_deps:
        session.install(f"./{dep}")  # non-editable: what a user gets from the index ("./": a folder, not a name)
    session.install(f"./{folder}", "pytest>=8")
    module = package.replace("-", "_")
    session.run("python", "-c", f"import {module}; print({module}.__name__, {module}.__version__)", env=OFFLINE)
    smoke = ROOT / folder / "tests" / "test_smoke.py"
    if smoke.exists():
        session.run("pytest", str(smoke), "-q", "-p", "no:cacheprovider", env=OFFLINE)


CORE_NAMES = {"flowcore", "flowkernels"}


@nox.session
def demo(session: nox.Session) -> None:
    """Run every method's toy-world demo (no training) and write demo-output/index.html."""
    _install_all(session)
    session.run("python", "scripts/demo_report.py", "--output-dir", "demo-output", *session.posargs, env=OFFLINE)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks of every package (ratios measured side by side in one run)."""
    _install_all(session)
    session.run("python", "kernels/benchmarks/bench_ttt.py", "--tiny", *session.posargs, env=OFFLINE)
    for method in METHODS:
        session.run(method, "bench", *session.posargs, env=OFFLINE)
