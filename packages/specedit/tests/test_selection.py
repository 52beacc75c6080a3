"""S1–S3: selection rules, the matched source view, and localisation of an oracle draft's edit."""

from __future__ import annotations

import itertools
import math

import torch
from _specedit_fakes import C, OracleKontext, euler_run, flux_scheduler

from specedit import SpecEditConfig, apply_specedit, specedit_summary
from specedit.draft import draft_inputs
from specedit.features import score_draft
from specedit.layout import Grid, plan_segment
from specedit.ops import pack, pad_reflect, pool
from specedit.selection import cell_scores, select_cells, uniform_cells


def test_s1_threshold_is_strict_and_uniform_grid_count():
    grid = Grid(14, 10)  # 7×5 cells
    scores = torch.zeros(1, 7, 5)
    scores[0, 2, 3] = 0.75  # exactly tau: not selected
    scores[0, 4, 1] = 0.7500001
    sel = select_cells(scores, grid, tau=0.75, uniform_stride=0)
    assert sel.edit.sum() == 1 and sel.edit[4, 1] and not sel.edit[2, 3]
    for k in (2, 3, 4):
        unif = uniform_cells(grid, k)
        assert int(unif.sum()) == math.ceil(7 / k) * math.ceil(5 / k)
        assert unif[0, 0] and all(bool(unif[i, j]) == (i % k == 0 and j % k == 0) for i in range(7) for j in range(5))
    sel = select_cells(scores, grid, tau=0.75, uniform_stride=3)
    assert torch.equal(sel.union, sel.edit | uniform_cells(grid, 3))
    assert sel.rho == 4 * int(sel.union.sum()) / grid.n_tokens


def test_s1_32x32_coarse_grid_uniform_fraction():
    grid = Grid(64, 64)
    assert round(int(uniform_cells(grid, 3).sum()) / grid.n_cells, 3) == 0.118


def test_s1_ragged_tokens_always_fine():
    grid = Grid(7, 5)
    for cells in (torch.zeros(3, 2, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool)):
        plan = plan_segment(grid, cells)
        fine = set(plan.fine_idx.tolist())
        ragged = set(torch.nonzero(grid.ragged_tokens).reshape(-1).tolist())
        assert ragged <= fine and len(ragged) == 7 * 5 - 4 * 6
    sel = select_cells(torch.zeros(3, 2), grid, tau=0.75, uniform_stride=0)
    assert sel.rho == (7 * 5 - 24) / 35


def test_s1_rho_monotone_in_tau_and_ratio_mode():
    grid = Grid(16, 16)
    scores = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0)) * 4
    rhos = [select_cells(scores, grid, tau=t, uniform_stride=3).rho for t in (-1.0, 0.5, 1.0, 2.0, 3.0, 4.0)]
    assert all(a >= b for a, b in itertools.pairwise(rhos)) and rhos[0] == 1.0
    assert select_cells(scores, grid, tau=4.0, uniform_stride=0).edit.sum() == 0
    sel = select_cells(scores, grid, ratio=0.25, uniform_stride=0)
    top = scores.amax(0).reshape(-1)
    assert int(sel.edit.sum()) == 16
    assert float(top[sel.edit.reshape(-1)].min()) >= float(top[~sel.edit.reshape(-1)].max())
    # batch rows are united
    one = select_cells(scores[:1], grid, tau=2.0, uniform_stride=0).edit
    two = select_cells(scores[1:], grid, tau=2.0, uniform_stride=0).edit
    assert torch.equal(select_cells(scores, grid, tau=2.0, uniform_stride=0).edit, one | two)


def test_cell_scores_reduce_over_the_4x4_latent_pixels():
    grid = Grid(4, 6)
    s = torch.zeros(1, 8, 12)
    s[0, 5, 9] = 3.0
    assert cell_scores(s, grid, "max")[0, 1, 2] == 3.0
    assert cell_scores(s, grid, "mean")[0, 1, 2] == 3.0 / 16


def test_s2_matched_view_of_an_unchanged_draft_scores_zero():
    g = torch.Generator().manual_seed(0)
    for hh, ww in ((16, 16), (18, 14)):
        ref = torch.randn(2, 3, hh, ww, generator=g)
        inputs = draft_inputs(torch.randn(2, 3, hh, ww, generator=g), ref, 4)
        for extractor in ("latent", "color_pyramid"):
            s = score_draft(inputs.reference_pooled_grid, inputs.reference_pooled_grid, ref, factor=4,
                            source_view="matched", extractor=extractor, vae=None, to_vae_space=lambda z: z)
            assert torch.equal(s, torch.zeros_like(s))
            grid = Grid(hh // 2, ww // 2)
            sel = select_cells(cell_scores(s, grid), grid, tau=0.75, uniform_stride=3)
            assert torch.equal(sel.union, uniform_cells(grid, 3))


def test_s3_oracle_draft_with_a_flipped_patch_is_localised():
    grid = Grid(16, 16)  # 8×8 cells; the draft pixel = one cell
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, C, 32, 32, generator=g)
    padded, _ = pad_reflect(ref, 8)
    draft_target = pool(padded, 4).clone()
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[2:4, 5:7] = True
    draft_target[..., patch] *= -1
    model = OracleKontext({"c": torch.randn(1, C, 32, 32, generator=g)}, draft_target=draft_target)
    sched = flux_scheduler()
    apply_specedit(model, SpecEditConfig(feature_extractor="latent"), scheduler=sched)
    euler_run(model, sched, pack(torch.randn(1, C, 32, 32, generator=g)), pack(ref), (16, 16), 6,
              family="flux_kontext")
    stats = specedit_summary(model)
    union = stats.fine_cells
    dil = torch.nn.functional.max_pool2d(patch.float()[None, None], 3, 1, 1)[0, 0] > 0
    assert bool(union[patch].all()), "every flipped cell must be selected"
    assert bool((union <= (dil | uniform_cells(grid, 3))).all()), "selection leaks beyond one cell of the patch"
    assert stats.mask_source == "draft" and stats.forward_calls_draft == 8
