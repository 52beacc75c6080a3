"""Spec §7 test 27: presets resolve to the §5 table; option validation."""

from __future__ import annotations

import dataclasses

import pytest

from feat_tryon.config import PRESETS, FEATConfig


def _diff(a, b, prefix=""):
    out = {}
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(va):
            out.update(_diff(va, vb, f"{f.name}."))
        elif va != vb:
            out[prefix + f.name] = vb
    return out


EXPECTED = {
    "feat": {},
    "baseline": {"ddi.enabled": False, "ddi.text_scale": 1.0, "ofr.enabled": False, "ranf.sketch_gating": "none",
                 "ranf.keep_source": "person", "ranf.init_from": "person"},
    "baseline_sketch_region": {"ddi.enabled": False, "ddi.text_scale": 1.0, "ofr.enabled": False,
                               "ranf.sketch_gating": "none", "ranf.keep_source": "person",
                               "ranf.init_from": "person", "ranf.operating_area": "sketch"},
    "no_ofr": {"ofr.enabled": False},
    "no_ranf": {"ranf.enabled": False},
    "two_region": {"ranf.sketch_gating": "none"},
    "paper_literal": {"ofr.center": "origin"},
    "no_sdi": {"ddi.enabled": False},
    "no_cspe": {"ddi.cspe": False},
    "feat_residual_mask": {"ranf.sketch_gating": "residual_mask"},
}


def test_27_presets_match_the_spec_table():
    feat = FEATConfig()
    assert (feat.num_inference_steps, feat.guidance_scale, feat.sketch_scale, feat.image_scale) == (50, 7.5, 0.7, 0.5)
    assert (feat.ddi.text_scale, feat.ddi.kappa, feat.ddi.sigma_frac, feat.ofr.alpha, feat.ofr.center) == \
        (0.5, 1.0, 0.05, 1.0, "white")
    assert (feat.ranf.sketch_gating, feat.ranf.init_strength, feat.ranf.final_keep) == ("two_pass", 1.0, "clean")
    assert set(PRESETS) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert _diff(feat, FEATConfig.preset(name)) == want, name


def test_overrides_nested_flat_and_errors():
    c = FEATConfig.preset("baseline", sketch_gating="residual_mask", ddi={"kappa": 0.5}, num_inference_steps=10)
    assert c.ranf.sketch_gating == "residual_mask" and c.ddi.kappa == 0.5 and c.num_inference_steps == 10
    assert c.ranf.keep_source == "person"
    assert FEATConfig.preset("feat", alpha=None).ofr.alpha == 1.0  # None = not given
    with pytest.raises(ValueError, match="unknown preset"):
        FEATConfig.preset("nope")
    with pytest.raises(ValueError, match="nested"):
        FEATConfig.preset("feat", enabled=False)
    with pytest.raises(ValueError, match="unknown FEAT option"):
        FEATConfig.preset("feat", warp_speed=9)
    with pytest.raises(ValueError, match="init_strength"):
        FEATConfig.preset("feat", init_strength=0.0)
    with pytest.raises(ValueError, match="sketch_gating"):
        FEATConfig.preset("feat", sketch_gating="three_pass")
    assert FEATConfig.from_dict(c.to_dict()) == c
