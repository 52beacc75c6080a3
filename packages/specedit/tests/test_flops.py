"""C2: the analytic FLOP count equals FlopCounterMode on every call type; the spec §8.3 table is reproduced."""

from __future__ import annotations

import pytest
import torch

from specedit import SpecEditConfig
from specedit.bench import build_calls
from specedit.flops import (
    FLUX_KONTEXT_DEV,
    SPEC_TABLE,
    ArchSpec,
    forward_flops,
    measured_forward_flops,
    paper_table,
    run_flops,
)
from specedit.layout import Grid


def _models():
    from _specedit_fakes import tiny_kontext_transformer

    from flowcore.testing import tiny_qwen_image_edit

    yield "flux", tiny_kontext_transformer()
    for zero_cond in (False, True):
        yield f"qwen-zero_cond_t={zero_cond}", tiny_qwen_image_edit(
            num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(8, 12, 12), zero_cond_t=zero_cond)


@pytest.mark.parametrize(("name", "model"), list(_models()), ids=lambda v: v if isinstance(v, str) else "")
def test_c2_analytic_flops_equal_measured_for_every_call_type(name, model):
    from specedit.bench import _prepare_model

    processor = _prepare_model(model)  # mixed calls need the bias processor / float rotary
    arch = ArchSpec.from_transformer(model)
    calls = build_calls(model, Grid(6, 6), 7, rhos=(0.25, 1.0), device=torch.device("cpu"))
    names = {c.name for c in calls}
    assert {"full", "draft", "coarse-fullref", "coarse-pooledref", "mixed-0.25-bias"} <= names
    from specedit.families import family_for

    family = family_for(model)
    for call in calls:
        processor.key_bias = call.bias
        if call.plan is not None:
            family.activate(model, call.plan, None)
        try:
            measured = measured_forward_flops(model, **call.kwargs)
        finally:
            processor.key_bias = None
            family.activate(model, None, None)
        assert measured == forward_flops(arch, call.n_img, 7), call.name


def test_c2_batch_and_arch_from_config():
    arch = ArchSpec.from_config({"_class_name": "FluxTransformer2DModel", "num_attention_heads": 24,
                                 "attention_head_dim": 128, "in_channels": 64, "num_layers": 19,
                                 "num_single_layers": 38, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                                 "guidance_embeds": True, "patch_size": 1})
    assert arch == FLUX_KONTEXT_DEV
    assert forward_flops(arch, 100, 10, batch=3) == 3 * forward_flops(arch, 100, 10)


@pytest.mark.parametrize("arch_name", ["flux-kontext-dev", "qwen-image-edit"])
def test_flops_table_reproduces_spec_within_one_percent(arch_name):
    rows = paper_table(arch_name)
    for row in rows:
        full, mirror = SPEC_TABLE[arch_name][row["nfe"]]
        for rho, want_full, want_mirror in zip((0.118, 0.25, 0.5), full, mirror):
            assert abs(row[f"full@{rho:g}"] / want_full - 1) < 0.01
            assert abs(row[f"mirror_mask@{rho:g}"] / want_mirror - 1) < 0.01


def test_flops_full_size_step_costs_match_the_paper_accounting():
    rep = run_flops(FLUX_KONTEXT_DEV, SpecEditConfig(), 1024, 1024, 18, 512, 1, 0.25)
    assert abs(rep.per_call["full"] / 1e12 - 165.5) < 0.1  # paper: 8299.54 / 50 = 166.0
    assert abs(rep.per_call["draft"] / 1e12 - 14.0) < 0.1
    assert rep.split == (5, 11, 2) and rep.draft_steps == 8
    assert round(rep.relative_step_cost["coarse"], 3) == 0.574
    with pytest.raises(ValueError, match="multiples of 16"):
        run_flops(FLUX_KONTEXT_DEV, SpecEditConfig(), 1000, 1024, 18, 512)
