"""Rows of a network call: which branch and kind each batch row carries, per-row guidance, NFE counting.

The *state* of an edit holds ``(1 + m)·B`` rows: the B source rows first, then target ``j`` of image ``b`` at row
``(1 + j)·B + b`` (target-major). A network call carries a subset of the branches (source ``-1``, targets
``0..m-1``), each as a cond row and, for true-CFG models, an uncond row. Order (spec §2.5): all uncond rows, then
all cond rows, branches in order, images inside a branch; for m = 1, B = 1 this is the reference's
``[u_src, u_tar, c_src, c_tar]``.

:class:`BranchCaller` turns the state rows of the chosen branches into one ``model.predict`` call and combines
the rows per branch (``u + g·(c − u)`` with the branch's own scale), counting calls and rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowcore.adapters import Conditioning
from flowcore.attention import CallContext
from flowcore.prediction import to_x0_eps
from flowcore.schedules import Schedule

__all__ = ["SOURCE", "BranchCaller", "CallState", "NFECount", "RowPlan"]

SOURCE = -1
STATE_KEY = "directedit"


@dataclass
class NFECount:
    """Network calls (the reported NFE) and rows (per-sample passes), in total and per phase."""

    calls: int = 0
    rows: int = 0
    by_phase: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add(self, phase: str, rows: int) -> None:
        self.calls += 1
        self.rows += rows
        calls, total = self.by_phase.get(phase, (0, 0))
        self.by_phase[phase] = (calls + 1, total + rows)

    def absorb(self, other: NFECount) -> None:
        """Add ``other``'s counts to this counter (in place)."""
        merged = self.merged(other)
        self.calls, self.rows, self.by_phase = merged.calls, merged.rows, merged.by_phase

    def merged(self, other: NFECount) -> NFECount:
        out = NFECount(self.calls + other.calls, self.rows + other.rows, dict(self.by_phase))
        for phase, (calls, rows) in other.by_phase.items():
            c0, r0 = out.by_phase.get(phase, (0, 0))
            out.by_phase[phase] = (c0 + calls, r0 + rows)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "rows": self.rows,
                "by_phase": {k: {"calls": c, "rows": r} for k, (c, r) in self.by_phase.items()}}


@dataclass
class CallState:
    """What the attention processors of one call need (``ctx.state["directedit"]``).

    ``inject``: ``(target rows, source rows)`` of the batch: V[target] ← V[source]. ``replay``: ``(target rows,
    positions)`` into ``values[site]`` (the Values recorded in the inversion). ``record``: batch rows whose V is
    stored into ``store[site]``. ``probe``: an attention probe and the cond source rows it reads. ``log``: the
    sites that changed a V (for tests and reports).
    """

    step: int
    inject: tuple[Tensor, Tensor] | None = None
    replay: tuple[Tensor, Tensor] | None = None
    values: dict[str, Tensor] | None = None
    record: Tensor | None = None
    store: dict[str, Tensor] | None = None
    store_device: torch.device | str | None = None
    probe: Any = None
    probe_rows: Tensor | None = None
    log: list[tuple[str, int, str]] | None = None
    phase: str = "forward"


@dataclass(frozen=True)
class RowPlan:
    """The rows of one call: ``rows[r] = (branch, kind, image)`` and index maps built from them."""

    rows: tuple[tuple[int, str, int], ...]
    n_images: int

    @property
    def size(self) -> int:
        return len(self.rows)

    def state_index(self) -> Tensor:
        """For each batch row, its row in the state-input tensor: ``(branch + 1)·B + image``."""
        return torch.tensor([(br + 1) * self.n_images + b for br, _, b in self.rows], dtype=torch.long)

    def branches(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(br for br, _, _ in self.rows))

    def find(self, branch: int, kind: str, image: int) -> int | None:
        try:
            return self.rows.index((branch, kind, image))
        except ValueError:
            return None

    def kinds(self, branch: int) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for br, k, _ in self.rows if br == branch))


def make_plan(branches: Sequence[int], uncond: dict[int, bool], n_images: int) -> RowPlan:
    """Uncond rows of the branches that have them, then cond rows of all (spec §2.5 order)."""
    rows: list[tuple[int, str, int]] = []
    for br in branches:
        if uncond[br]:
            rows += [(br, "uncond", b) for b in range(n_images)]
    for br in branches:
        rows += [(br, "cond", b) for b in range(n_images)]
    return RowPlan(tuple(rows), n_images)


class BranchCaller:
    """One network call for the chosen branches of a state batch, with per-branch guidance.

    Args:
        model: the :class:`~flowcore.adapters.FlowModel`.
        n_images: B.
        source_cond / source_uncond: B rows (uncond: the ``""`` encoding; ``None`` if the source has no uncond row).
        target_cond / target_uncond: m·B rows, target-major (``None`` when there are no targets / no uncond).
        source_guidance, target_guidances: g_src and one g per target.
        fold_unit_guidance: drop the uncond row of a CFG branch whose scale is exactly 1.
        reference: Kontext reference tokens (shared by every row), ``grid``: the target token grid.
        nfe: the counter to add every call to.
    """

    def __init__(self, model: Any, *, n_images: int, source_cond: Conditioning, source_uncond: Conditioning | None,
                 target_cond: Conditioning | None = None, target_uncond: Conditioning | None = None,
                 source_guidance: float = 1.0, target_guidances: Sequence[float] = (),
                 fold_unit_guidance: bool = False, reference: Tensor | None = None,
                 grid: tuple[int, int] | None = None, nfe: NFECount | None = None):
        # a Kontext reference of the image's own size shares its token grid (non-square images need it named)
        self.reference_grid = None
        if reference is not None and grid is not None and reference.ndim == 3 and \
                reference.shape[1] == grid[0] * grid[1]:
            self.reference_grid = grid
        self.model = model
        self.B = n_images
        self.m = 0 if target_cond is None else len(target_cond) // n_images
        if target_cond is not None and len(target_cond) != self.m * n_images:
            raise ValueError(f"{len(target_cond)} target rows do not split into targets for {n_images} images")
        if len(target_guidances) not in (self.m, 0) and self.m:
            raise ValueError(f"{len(target_guidances)} target guidance values for {self.m} targets")
        self.guidance = {SOURCE: float(source_guidance), **{j: float(g) for j, g in enumerate(target_guidances)}}
        self.uses_cfg = model.guidance_kind == "cfg"
        self.uncond = {br: self.uses_cfg and not (fold_unit_guidance and g == 1.0) for br, g in self.guidance.items()}
        if self.uncond[SOURCE] and source_uncond is None:
            raise ValueError("the source branch needs uncond rows (the encoding of '') for CFG")
        if self.m and any(self.uncond[j] for j in range(self.m)) and target_uncond is None:
            raise ValueError("the target branches need uncond rows (the encoding of '') for CFG")
        self.reference = reference
        self.grid = grid
        self.nfe = nfe if nfe is not None else NFECount()
        parts: list[Conditioning] = [source_cond]
        self._offset: dict[tuple[str, str], int] = {("src", "cond"): 0}
        pos = len(source_cond)
        for key, cond in ((("src", "uncond"), source_uncond if self.uncond[SOURCE] else None),
                          (("tar", "cond"), target_cond),
                          (("tar", "uncond"), target_uncond if self.m and any(self.uncond[j] for j in range(self.m))
                           else None)):
            if cond is not None:
                self._offset[key] = pos
                parts.append(cond)
                pos += len(cond)
        self.bank = Conditioning.cat(parts) if len(parts) > 1 else source_cond
        self._plans: dict[tuple[int, ...], tuple[RowPlan, Conditioning, Any]] = {}
        self._on_device: dict[tuple[tuple[int, ...], str], tuple[Tensor, Tensor | None]] = {}

    # --- plans -------------------------------------------------------------------------------------------------
    def plan(self, branches: Sequence[int]) -> RowPlan:
        return self._plan_parts(tuple(branches))[0]

    def _bank_row(self, branch: int, kind: str, image: int) -> int:
        if branch == SOURCE:
            return self._offset[("src", kind)] + image
        return self._offset[("tar", kind)] + branch * self.B + image

    def _plan_parts(self, branches: tuple[int, ...]) -> tuple[RowPlan, Conditioning, Any]:
        if branches not in self._plans:
            plan = make_plan(branches, self.uncond, self.B)
            cond = self.bank[[self._bank_row(br, k, b) for br, k, b in plan.rows]]
            guidance = None
            if self.model.guidance_kind == "embedded":
                guidance = torch.tensor([self.guidance[br] for br, _, _ in plan.rows], dtype=torch.float32)
            self._plans[branches] = (plan, cond, guidance)
        return self._plans[branches]

    # --- the call ----------------------------------------------------------------------------------------------
    def __call__(self, inputs: Tensor, i: int, schedule: Schedule, branches: Sequence[int], *, phase: str,
                 state: CallState | None = None) -> Tensor:
        """Per-branch guided outputs at point ``i`` for ``inputs`` (the state-layout network inputs).

        Returns a tensor shaped like ``inputs`` (dtype of ``inputs``): rows of the called branches hold the guided
        output (a velocity for rectified flow; ε̂ for VP models, converted with the network input and point ``i``'s
        coefficients, spec §2.4), rows of other branches are zero.
        """
        plan, cond, guidance = self._plan_parts(tuple(branches))
        key = (tuple(branches), str(inputs.device))
        if key not in self._on_device:  # index and guidance tensors live on the device once, not per call
            self._on_device[key] = (plan.state_index().to(inputs.device),
                                    None if guidance is None else guidance.to(inputs.device))
        index, g = self._on_device[key]
        latents = inputs.index_select(0, index)
        ctx = CallContext(step=i, num_steps=schedule.num_steps, phase=phase, rows=plan,
                          state={STATE_KEY: state} if state is not None else {})
        kwargs: dict[str, Any] = {"ctx": ctx}
        if self.reference is not None:
            kwargs["reference"] = self.reference
            if self.reference_grid is not None:
                kwargs["reference_grid"] = self.reference_grid
        if self.grid is not None and inputs.ndim == 3:
            kwargs["grid"] = self.grid
        out = self.model.predict(latents, schedule.t(i), cond, guidance=g, **kwargs)
        self.nfe.add(phase, plan.size)
        out = out.to(inputs.dtype)
        result = torch.zeros_like(inputs)
        for br in plan.branches():
            rows_c = [plan.find(br, "cond", b) for b in range(self.B)]
            v = out[rows_c]
            if "uncond" in plan.kinds(br):
                u = out[[plan.find(br, "uncond", b) for b in range(self.B)]]
                v = self.model.combine_cfg(u, v, self.guidance[br])
            start = (br + 1) * self.B
            result[start:start + self.B] = v
        if self.model.family == "vp":
            a, s = schedule.a.to(inputs.device), schedule.s.to(inputs.device)
            _, eps = to_x0_eps(result, inputs, a[i].to(inputs.dtype), s[i].to(inputs.dtype),
                               kind=self.model.prediction)
            called = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
            called[index] = True
            result = torch.where(called.view(-1, *[1] * (inputs.ndim - 1)), eps, torch.zeros_like(eps))
        return result

    @property
    def output_kind(self) -> str:
        """The kind of what :meth:`__call__` returns (``"flow"`` or ``"eps"``)."""
        return "eps" if self.model.family == "vp" else "flow"
