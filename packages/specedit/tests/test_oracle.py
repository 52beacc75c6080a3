"""Oracle tests O1–O3 and the carrier properties P1/P2 (spec §7).

The oracle transformer returns the exact velocity towards a known clean target at the resolution each token
represents. An independent recursion predicts the carrier after every step: with ``x = σε + R``, a fine step moves
``R ← (σ'/σ)R + (1 − σ'/σ)X0`` and a coarse step ``R ← R + (σ'/σ − 1)·U_2P_2(R − X0)`` (spec §2.4). The hook must
follow it on every cell, end at ``X0`` when the last step is fine (O1) and at ``U_2P_2X0`` on cells that never
become fine (O2). Wrong view/lift variants must break it (O3).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _specedit_fakes import C, OracleKontext, OracleQwen, euler_run, flux_scheduler

import specedit.hooks as hooks_module
from specedit import SpecEditConfig, apply_specedit, specedit_summary
from specedit.layout import Grid
from specedit.ops import nearest_up, pack, pool, unpack

TOL = 1e-5
Tensor = torch.Tensor


def _expected(eps: Tensor, x0: Tensor, grid: Grid, sigmas: Tensor, stages: list[str], fine_cells: Tensor) -> list:
    """Predicted carrier grids after each step (independent of the hook's code paths)."""
    r = torch.zeros_like(x0, dtype=torch.float64)
    eps, x0 = eps.double(), x0.double()
    out = []
    hc, wc = grid.hc, grid.wc
    for i, stage in enumerate(stages):
        s, s2 = float(sigmas[i]), float(sigmas[i + 1])
        fine_step = s2 / s * r + (1 - s2 / s) * x0
        region = (r - x0)[..., : 4 * hc, : 4 * wc]
        coarse_step = r.clone()
        coarse_step[..., : 4 * hc, : 4 * wc] += (s2 / s - 1) * nearest_up(pool(region, 2), 2)
        if stage == "full":
            cells = torch.ones(hc, wc, dtype=torch.bool)
        elif stage == "coarse":
            cells = torch.zeros(hc, wc, dtype=torch.bool)
        else:
            cells = fine_cells
        fine_px = torch.ones(x0.shape[-2:], dtype=torch.bool)
        fine_px[: 4 * hc, : 4 * wc] = cells.repeat_interleave(4, 0).repeat_interleave(4, 1)
        r = torch.where(fine_px, fine_step, coarse_step)
        out.append(s2 * eps + r)
    return out





def _setup(family: str, grid: Grid, batch: int, cfg: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hh, ww = grid.latent_hw
    targets = {"c": torch.randn(batch, C, hh, ww, generator=g)}
    if cfg:
        targets["u"] = torch.randn(batch, C, hh, ww, generator=g)
    eps = torch.randn(batch, C, hh, ww, generator=g)
    ref = torch.randn(batch, C, hh, ww, generator=g)
    cls = OracleKontext if family == "flux_kontext" else OracleQwen
    return cls(targets), targets, eps, ref


def _run_oracle(family, grid, batch, cfg_scale, config, steps=6, seed=0):
    model, targets, eps, ref = _setup(family, grid, batch, cfg_scale is not None, seed)
    sched = flux_scheduler()
    apply_specedit(model, config, scheduler=sched)
    seen = []
    euler_run(model, sched, pack(eps), pack(ref), (grid.h, grid.w), steps, family=family, cfg_scale=cfg_scale,
              callback=lambda i, x: seen.append(unpack(x.float(), grid.h, grid.w)))
    x0 = targets["c"] if cfg_scale is None else targets["u"] + cfg_scale * (targets["c"] - targets["u"])
    return model, sched, eps, x0, seen


def _stages(config: SpecEditConfig, steps: int) -> list[str]:
    split = config.split(steps)
    return [split.stage(i) for i in range(steps)]


MASKS = ["random", "none", "all"]


@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit"])
@pytest.mark.parametrize("grid", [Grid(6, 6), Grid(7, 5)], ids=["even", "ragged"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("cfg_scale", [None, 3.0], ids=["nocfg", "cfg"])
def test_o1_oracle_follows_exact_path_and_ends_at_target(family, grid, mask_kind, cfg_scale):
    if mask_kind == "random":
        mask = torch.rand(grid.hc, grid.wc, generator=torch.Generator().manual_seed(1)) > 0.5
    else:
        mask = mask_kind
    config = SpecEditConfig(mask_override=mask, n_full=1)
    steps = 6
    model, sched, eps, x0, seen = _run_oracle(family, grid, 2, cfg_scale, config, steps)
    fine = torch.full((grid.hc, grid.wc), mask == "all") if isinstance(mask, str) else mask
    expected = _expected(eps, x0, grid, sched.sigmas, _stages(config, steps), fine)
    for i, (got, want) in enumerate(zip(seen, expected)):
        err = (got.double() - want).abs().max().item()
        assert err <= TOL, f"step {i}: carrier deviates from the exact path by {err:.3g}"
    assert (seen[-1] - x0).abs().max() <= TOL
    stats = specedit_summary(model)
    assert stats.branches == (2 if cfg_scale else 1)


@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit"])
def test_o2_no_final_steps_leave_coarse_cells_at_pooled_target(family):
    grid = Grid(6, 7)
    mask = torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
    mask[0, 1] = mask[2, 2] = True
    config = SpecEditConfig(mask_override=mask, n_full=0, min_full_steps=0, n_coarse=2)
    _, _, _, x0, seen = _run_oracle(family, grid, 1, None, config, steps=5)
    final = seen[-1]
    hc, wc = grid.hc, grid.wc
    smooth = nearest_up(pool(x0[..., : 4 * hc, : 4 * wc], 2), 2)
    cells = mask.repeat_interleave(4, 0).repeat_interleave(4, 1)
    region = final[..., : 4 * hc, : 4 * wc]
    assert (region - torch.where(cells, x0[..., : 4 * hc, : 4 * wc], smooth)).abs().max() <= TOL
    # ragged column (odd w) is always fine
    assert (final[..., 4 * wc:] - x0[..., 4 * wc:]).abs().max() <= TOL


def _wrong_view(x_region, eps_pooled, sigma):
    return pool(x_region, 2)


def _wrong_lift_u_only(u, eps_bar, eps_region):
    return nearest_up(u, 2)


def _wrong_lift_no_eps_bar(u, eps_bar, eps_region):
    return nearest_up(u, 2) + eps_region - nearest_up(pool(eps_region, 2), 2)


@pytest.mark.parametrize("variant", ["view_without_noise_term", "lift_u_only", "lift_without_eps_bar"])
def test_o3_wrong_variants_fail_the_oracle(monkeypatch, variant):
    if variant == "view_without_noise_term":
        monkeypatch.setattr(hooks_module, "coarse_view", _wrong_view)
    elif variant == "lift_u_only":
        monkeypatch.setattr(hooks_module, "lift_velocity", _wrong_lift_u_only)
    else:
        monkeypatch.setattr(hooks_module, "lift_velocity", _wrong_lift_no_eps_bar)
    grid = Grid(6, 6)
    mask = torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
    mask[1, 1] = True
    steps = 6
    for config in (SpecEditConfig(mask_override=mask, n_full=1),
                   SpecEditConfig(mask_override=mask, n_full=0, min_full_steps=0)):
        _model, sched, eps, x0, seen = _run_oracle("flux_kontext", grid, 1, None, config, steps)
        expected = _expected(eps, x0, grid, sched.sigmas, _stages(config, steps), mask)
        worst = max((g.double() - w).abs().max().item() for g, w in zip(seen, expected))
        assert worst > 1e-3, f"the wrong variant {variant} still follows the oracle path ({worst:.3g})"


def test_p1_p2_coarse_view_is_exact_euler_and_details_stay_sigma_eps():
    """P1 with a random real tiny FLUX transformer; P2 on cells that stay coarse the whole run."""
    from flowcore.testing import tiny_flux

    model = tiny_flux(kontext=True, num_attention_heads=4, attention_head_dim=32, axes_dims_rope=(8, 12, 12),
                      in_channels=4 * C, joint_attention_dim=8, pooled_projection_dim=8)
    grid = Grid(6, 6)
    mask = torch.zeros(grid.hc, grid.wc, dtype=torch.bool)
    mask[0, 0] = True
    config = SpecEditConfig(mask_override=mask, n_full=0, min_full_steps=0, n_coarse=2)
    sched = flux_scheduler()
    apply_specedit(model, config, scheduler=sched)
    hook = hooks_module._hook_of(model)
    hook.trace = []
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(1, C, 12, 12, generator=g)
    ref = torch.randn(1, C, 12, 12, generator=g)
    seen = []
    with torch.no_grad():
        euler_run(model, sched, pack(eps), pack(ref), (6, 6), 5, family="flux_kontext",
                  callback=lambda i, x: seen.append(unpack(x.float(), 6, 6)))
    trace = hook.trace
    assert len(trace) == 5
    for a, b in itertools.pairwise(trace):
        predicted = a["y"] + (b["sigma"] - a["sigma"]) * a["u"]
        keep = (a["coarse_cells"] & b["coarse_cells"]).repeat_interleave(2, 0).repeat_interleave(2, 1)
        err = (predicted - b["y"])[..., keep].abs().max().item()
        assert err <= 1e-6, f"coarse state off the Euler step by {err:.3g}"
    from specedit.ops import haar_analysis

    sigmas = sched.sigmas
    coarse_px = (~mask).repeat_interleave(2, 0).repeat_interleave(2, 1)
    _, *eps_details = haar_analysis(eps)
    for i, x in enumerate(seen):
        _, *details = haar_analysis(x)
        for d, e in zip(details, eps_details):
            err = (d - float(sigmas[i + 1]) * e)[..., coarse_px].abs().max().item()
            assert err <= 1e-6, f"step {i}: carrier detail deviates from σ·detail(ε) by {err:.3g}"
