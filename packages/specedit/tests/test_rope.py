"""R1: the float-position Qwen rotary equals QwenEmbedRope at integer positions; R2: Kontext coarse ids."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

from specedit.families.flux_kontext import FluxKontextFamily
from specedit.families.qwen_image_edit import QwenImageEditFamily
from specedit.layout import Grid, plan_call, plan_segment
from specedit.rope_qwen import FloatPositionRope, QwenPositions


@pytest.mark.parametrize(("target", "reference"), [((4, 6), (4, 6)), ((5, 7), (3, 9)), ((9, 9), (9, 9))])
def test_r1_float_rope_equals_qwen_rope_at_integer_positions(target, reference):
    stock = QwenEmbedRope(theta=10000, axes_dim=[8, 12, 12], scale_rope=True)
    shapes = [[(1, *target), (1, *reference)]]
    n_txt = 11
    img_ref, txt_ref = stock(shapes, device=torch.device("cpu"), max_txt_seq_len=n_txt)
    wrapper = FloatPositionRope(stock)
    # no active layout: the stock module answers
    img_a, txt_a = wrapper(shapes, device=torch.device("cpu"), max_txt_seq_len=n_txt)
    assert torch.equal(img_a, img_ref) and torch.equal(txt_a, txt_ref)
    # integer positions through the float path: identical table values
    segs = [plan_segment(Grid(*target), None), plan_segment(Grid(*reference), None)]
    pos = torch.cat([QwenPositions.centred(s.positions, k, s.frame_grid) for k, s in enumerate(segs)])
    text_start = max(max(h // 2, w // 2) for h, w in (target, reference))
    wrapper.active = QwenPositions(pos, float(text_start))
    img_b, txt_b = wrapper(shapes, device=torch.device("cpu"), max_txt_seq_len=n_txt)
    assert img_b.dtype == img_ref.dtype == torch.complex64
    assert torch.equal(img_b, img_ref)
    assert torch.equal(txt_b, txt_ref)


def test_r1_family_positions_use_the_fine_frame_and_stock_text_start():
    grid = Grid(6, 6)
    cells = torch.zeros(3, 3, dtype=torch.bool)
    cells[1, 1] = True
    plan = plan_call("mixed", grid, grid, cells, reference_policy="full", coarse_positions="auto",
                     proportional_attention=True)
    pos = QwenImageEditFamily.positions(plan)
    assert pos.text_start == 3.0
    n_fine = plan.target.n_fine
    coarse = pos.image[n_fine:plan.n_target]
    # cell (0, 0) → rows/cols 0.5 in the fine frame, centred by ⌈6/2⌉ = 3
    assert torch.equal(coarse[0], torch.tensor([0.0, -2.5, -2.5]))
    assert torch.all(pos.image[plan.n_target:, 0] == 1)


def test_r2_kontext_coarse_id_is_the_mean_of_its_four_fine_ids():
    grid = Grid(7, 6)  # ragged row
    cells = torch.rand(3, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    plan = plan_call("mixed", grid, grid, cells, reference_policy="mirror_mask", coarse_positions="auto",
                     proportional_attention=True)
    kw = {"img_ids": torch.cat([torch.zeros(42, 3), torch.ones(42, 3)]), "hidden_states": None}
    family = FluxKontextFamily()
    from specedit.families.base import CallGeometry

    geometry = CallGeometry(grid, grid, 4, 0.5, 1)
    out = family.main_kwargs(None, kw, torch.zeros(1, plan.n_target + plan.n_reference, 16), plan, geometry)
    ids = out["img_ids"]
    assert ids.dtype == torch.float32
    stock = plan_segment(grid, None).positions  # (row, col) of every fine token, row-major
    for seg, flag, offset in ((plan.target, 0.0, 0), (plan.reference, 1.0, plan.n_target)):
        seg_ids = ids[offset:offset + seg.n]
        assert torch.all(seg_ids[:, 0] == flag)
        for k, cell in enumerate(seg.coarse_idx.tolist()):
            tokens = grid.cell_tokens[cell]
            assert torch.equal(seg_ids[seg.n_fine + k, 1:], stock[tokens].mean(0))
        assert torch.equal(seg_ids[: seg.n_fine, 1:], stock[seg.fine_idx])


def test_native_coarse_positions_for_a_pooled_reference():
    grid = Grid(8, 8)
    none = torch.zeros(4, 4, dtype=torch.bool)
    plan = plan_call("coarse", grid, grid, none, reference_policy="coarse", coarse_positions="auto",
                     proportional_attention=True)
    assert plan.target.native and plan.reference.native and plan.image_bias is None
    assert plan.target.frame_grid == (4, 4) and float(plan.target.positions.max()) == 3.0
    full = plan_call("coarse", grid, grid, none, reference_policy="full", coarse_positions="auto",
                     proportional_attention=True)
    assert not full.target.native and full.image_bias is not None
    assert torch.equal(full.image_bias[: full.target.n], torch.full((16,), float(torch.tensor(4.0).log())))
