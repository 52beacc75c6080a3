"""The benchmark machinery (spec §8) on a shrunken SDXL-like config, CPU: the GPU script's code path. Nothing here
asserts a time; only the counted quantities (UNet samples, FLOPs) are checked."""

from __future__ import annotations

import torch
from feat_helpers import SDXL_UNET

from feat_tryon.bench import full_sdxl_adapter, run_bench
from feat_tryon.reference_configs import SDXL_UNET_CONFIG


def test_bench_loop_on_an_sdxl_shaped_model(tmp_path):
    from feat_tryon.bench import bench_loop

    config = {**SDXL_UNET_CONFIG, **SDXL_UNET, "down_block_types": ("CrossAttnDownBlock2D",) * 2,
              "up_block_types": ("CrossAttnUpBlock2D",) * 2, "attention_head_dim": (2, 4), "norm_num_groups": 8,
              "sample_size": 8}
    adapter = full_sdxl_adapter("cpu", config=config, dtype=torch.float32)
    rows = {r["variant"]: r for r in bench_loop(adapter, grid=8, steps=1, repeats=1, warmup=0)}
    assert rows["two_pass"]["unet_sample_ratio"] == 2.0 and rows["residual_mask"]["unet_sample_ratio"] == 1.0
    assert rows["empty_removal"]["unet_sample_ratio"] == 1.0
    assert rows["two_pass"]["controlnet_sample_ratio"] == 1.0
    assert 1.3 < rows["two_pass"]["flop_ratio"] < 2.0  # (2 + r)/(1 + r) for this model's r
    assert abs(rows["residual_mask"]["flop_ratio"] - 1.0) < 0.01


def test_run_bench_rejects_full_size_on_cpu(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="cuda"):
        run_bench(tmp_path, full_size=True, device="cpu")
