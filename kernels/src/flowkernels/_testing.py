"""Test helpers shared by the tests and benchmark checks: error measures, tolerance rules (kernels.md §7),
layouts and random TTT inputs. Plain torch; no pytest dependency."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ._segments import Segment

LOWP_RMS_FACTOR = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def max_error(x: Tensor, ref: Tensor) -> float:
    """err(x) = max |x − ref| (in float64)."""
    return float((x.double() - ref.double()).abs().max())


def rel_error(x: Tensor, ref: Tensor) -> float:
    """rel(x) = ‖x − ref‖₂ / (‖ref‖₂ + 1e-12) (in float64)."""
    diff = (x.double() - ref.double()).norm()
    return float(diff / (ref.double().norm() + 1e-12))


def rms(x: Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def check_fp32(x: Tensor, ref: Tensor, label: str = "") -> tuple[bool, str]:
    """fp32 rule: rel ≤ 1e-5 and err ≤ 1e-4·max|ref|. Returns (passed, a one-line report)."""
    rel, err, bound = rel_error(x, ref), max_error(x, ref), 1e-4 * float(ref.double().abs().max())
    ok = rel <= 1e-5 and err <= bound
    return ok, f"{label} fp32: rel {rel:.2e} (≤ 1e-5), err {err:.2e} (≤ {bound:.2e})"


def check_lowp(x: Tensor, ref: Tensor, lowp: Tensor, dtype: torch.dtype, label: str = "") -> tuple[bool, str]:
    """Low-precision rule: err(x) ≤ 2·err(lowp) + c·rms(ref), c = 2e-3 (fp16) or 1e-2 (bf16).

    ``lowp`` is the torch reference run with ``compute_dtype=dtype`` on the same inputs; ``ref`` is float64.
    """
    c = LOWP_RMS_FACTOR[dtype]
    err_x, err_l = max_error(x, ref), max_error(lowp, ref)
    bound = 2 * err_l + c * rms(ref)
    ok = err_x <= bound
    return ok, (
        f"{label} {dtype}: err {err_x:.2e} ≤ 2·{err_l:.2e} + {c}·rms = {bound:.2e}; "
        f"rel kernel {rel_error(x, ref):.2e}, rel torch-lowp {rel_error(lowp, ref):.2e}"
    )


def assert_close_fp32(x: Tensor, ref: Tensor, label: str = "") -> None:
    ok, report = check_fp32(x, ref, label)
    print(report)
    assert ok, report


def assert_close_lowp(x: Tensor, ref: Tensor, lowp: Tensor, dtype: torch.dtype, label: str = "") -> None:
    ok, report = check_lowp(x, ref, lowp, dtype, label)
    print(report)
    assert ok, report


def make_layout(
    text_before: int = 0, grids: tuple[tuple[int, int], ...] = (), text_after: int = 0, text_between: int = 0
) -> tuple[int, tuple[Segment, ...]]:
    """(N, segments) of ``text_before`` text rows, the image grids (h, w) separated by ``text_between`` text
    rows, then ``text_after`` text rows."""
    segments, pos = [], text_before
    for i, (h, w) in enumerate(grids):
        if i:
            pos += text_between
        segments.append(Segment(pos, h, w))
        pos += h * w
    return pos + text_after, tuple(segments)


@dataclass
class TTTInputs:
    """Random inputs of ``ttt_attention``: q, k, v [B, N, H, D]; w1, w2 [H, D, D] fp32; convs or None."""

    q: Tensor
    k: Tensor
    v: Tensor
    w1: Tensor
    w2: Tensor
    q_conv: tuple[Tensor, Tensor] | None
    k_conv: tuple[Tensor, Tensor] | None

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TTTInputs:
        """Cast q, k, v to ``dtype`` (and everything to ``device``); float64 also upcasts weights and convs."""

        def act(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype or t.dtype)

        def par(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=torch.float64 if dtype == torch.float64 else t.dtype)

        def conv(c):
            return None if c is None else (par(c[0]), par(c[1]))

        return replace(
            self, q=act(self.q), k=act(self.k), v=act(self.v), w1=par(self.w1), w2=par(self.w2),
            q_conv=conv(self.q_conv), k_conv=conv(self.k_conv),
        )  # fmt: skip

    def args(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.q, self.k, self.v, self.w1, self.w2


def make_ttt_inputs(
    B: int, N: int, H: int, D: int, *, generator: torch.Generator, conv: bool = True, key_offset: float = 0.5,
    weight_std: float | None = None,
) -> TTTInputs:
    """Random fp32 CPU inputs. Keys get a per-channel offset and spread (so the key norm matters); fast
    weights default to std D^-1/2 (so SiLU is exercised away from its linear region)."""
    C = H * D

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    spread = 0.5 + torch.rand(C, generator=generator) * 2
    k = randn(B, N, H, D) * spread.view(H, D) + key_offset * randn(H, D)
    std = weight_std if weight_std is not None else D**-0.5
    convs = [(randn(C, 1, 3, 3) * 0.2, randn(C) * 0.1) for _ in range(2)] if conv else [None, None]
    return TTTInputs(
        q=randn(B, N, H, D), k=k, v=randn(B, N, H, D), w1=randn(H, D, D) * std, w2=randn(H, D, D) * std,
        q_conv=convs[0], k_conv=convs[1],
    )  # fmt: skip
