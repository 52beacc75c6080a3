"""C1: network calls ``c·(N_d + N)`` and per-call token counts of every stage and reference policy (spec §2.7)."""

from __future__ import annotations

import pytest
from _specedit_fakes import TokenCounter, kontext_call, kontext_pipe, qwen_call, qwen_pipe

from specedit import SpecEditConfig
from specedit.pipelines import SpecEditFluxKontextPipeline, SpecEditQwenImageEditPipeline


def _expected(hw: int, cells_fine: int, n_cells: int, policy: str, c: int, split: tuple[int, int, int],
              draft_steps: int = 8) -> list[int]:
    """Image tokens (target + reference) per network call, in call order."""
    n_c, n_m, n_f = split
    coarse_t = hw // 4
    mixed_t = 4 * cells_fine + (n_cells - cells_fine)
    ref_coarse = hw if policy == "full" else hw // 4
    ref_mixed = mixed_t if policy == "mirror_mask" else hw
    draft = 2 * (hw // 16)
    return ([coarse_t + ref_coarse] * (c * n_c) + [draft] * (c * draft_steps) + [mixed_t + ref_mixed] * (c * n_m)
            + [2 * hw] * (c * n_f))


@pytest.mark.parametrize(("policy", "cfg"), [("full", False), ("full", True), ("coarse", True),
                                             ("mirror_mask", True)])
def test_c1_kontext_calls_and_tokens(policy, cfg):
    pipe = SpecEditFluxKontextPipeline.from_pipe(kontext_pipe(), specedit_config=SpecEditConfig(
        reference_policy=policy, ratio=0.25))  # a fixed share of cells, so mixed calls really are mixed
    counter = TokenCounter(pipe.transformer)
    out = kontext_call(pipe, cfg=cfg)
    counter.remove()
    stats = out.specedit[0]
    c = 2 if cfg else 1
    assert stats.branches == c
    assert 4 <= stats.n_union < 16
    assert len(counter.tokens) == c * (8 + 6)
    assert stats.forward_calls_draft == 8 * c and stats.forward_calls_main == 6 * c
    want = _expected(64, stats.n_union, 16, policy, c, (stats.n_coarse, stats.n_mixed, stats.n_full))
    assert counter.tokens == want
    assert [call["target"] + call["reference"] for call in stats.calls] == [t for t in want if t != 8]


def test_c1_qwen_calls_and_tokens():
    pipe = SpecEditQwenImageEditPipeline.from_pipe(qwen_pipe())
    counter = TokenCounter(pipe.transformer)
    out = qwen_call(pipe, steps=5)
    counter.remove()
    stats = out.specedit[0]
    assert stats.branches == 2 and len(counter.tokens) == 2 * (8 + 5)
    assert counter.tokens == _expected(16, stats.n_union, 4, "full", 2, (stats.n_coarse, stats.n_mixed,
                                                                          stats.n_full))


def test_c1_mask_override_skips_the_draft():
    pipe = SpecEditFluxKontextPipeline.from_pipe(kontext_pipe(), specedit_config=SpecEditConfig(mask_override="none"))
    counter = TokenCounter(pipe.transformer)
    out = kontext_call(pipe)
    counter.remove()
    assert len(counter.tokens) == 6 and out.specedit[0].forward_calls_draft == 0
    assert out.specedit[0].mask_source == "override" and out.specedit[0].rho == 0.0
