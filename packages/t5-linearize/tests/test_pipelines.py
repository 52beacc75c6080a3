"""Pipelines (spec §5): call counting (test 18), saved pipelines reload through diffusers (test 17), loading checks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from diffusers import DiffusionPipeline

from flowcore.testing import CallCounter, tiny_pipeline
from t5_linearize import T5SD3Transformer2DModel, linearize
from t5_linearize.pipelines import T5FluxPipeline, T5StableDiffusion3Pipeline


def _call(pipe, **extra):
    return pipe(prompt=["a red circle", "a blue square"], num_inference_steps=2, guidance_scale=4.0, height=64,
                width=64, output_type="pt", generator=torch.Generator().manual_seed(0), **extra).images


def test_t5_pipeline_makes_as_many_transformer_calls_as_stock():
    stock = tiny_pipeline("sd3")
    t5 = T5StableDiffusion3Pipeline.from_pipe(stock, t5_transformer=linearize(stock.transformer, copy=True))
    with CallCounter(stock.transformer) as s_count:
        _call(stock)
    with CallCounter(t5.transformer) as t_count:
        images = _call(t5, ttt_backend="torch")
    assert t_count.calls == s_count.calls == 2  # one batched CFG call per step
    assert t_count.per_call == s_count.per_call == [4, 4]
    assert torch.isfinite(images).all()
    assert t5.last_run["backend_used"] == "torch" and t5.last_run["ttt_config"]["operator"] == "ttt"


def test_saved_pipeline_reloads_with_plain_diffusers(tmp_path):
    stock = tiny_pipeline("sd3")
    t5 = T5StableDiffusion3Pipeline.from_pipe(stock, t5_transformer=linearize(stock.transformer, copy=True))
    t5.save_pretrained(tmp_path)
    index = (tmp_path / "model_index.json").read_text()
    assert '"t5_linearize"' in index and '"T5SD3Transformer2DModel"' in index
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.transformer, T5SD3Transformer2DModel)
    a, b = t5.transformer.state_dict(), reloaded.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reloaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(_call(reloaded), _call(t5), rtol=0, atol=0)
    again = T5StableDiffusion3Pipeline.from_pretrained(tmp_path)
    assert isinstance(again, T5StableDiffusion3Pipeline) and isinstance(again.transformer, T5SD3Transformer2DModel)


def test_loading_a_mismatched_linearized_transformer_fails(tmp_path):
    stock = tiny_pipeline("sd3")
    stock.save_pretrained(tmp_path / "base")
    other = linearize(tiny_pipeline("sd3", transformer={"num_layers": 3}).transformer)
    other.save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="num_layers"):
        T5StableDiffusion3Pipeline.from_pretrained(tmp_path / "base", t5_transformer=tmp_path / "t5")
    with pytest.raises(ValueError, match="num_layers"):
        T5StableDiffusion3Pipeline.from_pipe(stock, t5_transformer=other)
    with pytest.raises(ValueError, match="unconverted transformer"):
        T5StableDiffusion3Pipeline.from_pretrained(tmp_path / "base")
    with pytest.raises(TypeError, match="T5FluxTransformer2DModel"):
        T5FluxPipeline.from_pipe(tiny_pipeline("flux"), t5_transformer=linearize(stock.transformer, copy=True))


def test_flux_pipeline_generates():
    stock = tiny_pipeline("flux")
    t5 = T5FluxPipeline.from_pipe(stock, t5_transformer=linearize(stock.transformer, copy=True))
    with CallCounter(t5.transformer) as counter:
        images = t5(prompt="a red circle", num_inference_steps=2, guidance_scale=3.5, height=64, width=64,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert counter.calls == 2 and torch.isfinite(images).all()


def test_kontext_pipeline_edits_with_a_reference_segment():
    from t5lin_helpers import LayoutSpy

    from t5_linearize.pipelines import T5FluxKontextPipeline

    stock = tiny_pipeline("flux-kontext")
    t5 = T5FluxKontextPipeline.from_pipe(stock, t5_transformer=linearize(stock.transformer, copy=True))
    spy = LayoutSpy(t5.transformer)
    image = torch.rand(1, 3, 64, 64)
    out = t5(image=image, prompt="make it blue", num_inference_steps=2, guidance_scale=2.5, height=64, width=64,
             max_area=64 * 64, _auto_resize=False, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.images).all()
    layout = spy.seen["transformer_blocks.0.attn.processor"]
    assert [s.role for s in layout.segments] == ["text", "target", "reference"]
    assert layout.segments[1].grid == layout.segments[2].grid == (4, 4)
