"""StyleAttrPipeline (§5.2): equal to the diffusers ControlNet pipelines without attributes (§7 test 20); bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from style_attr.network import attribute_networks
from style_attr.pipeline import StyleAttrPipeline, parse_attributes
from style_attr.testing import attach_random, random_edges


def _sd3_controlnet_pipe():
    """A tiny StableDiffusion3ControlNetPipeline. The ControlNet keeps the pooled text
    (``force_zeros_for_pooled_projection=False``): with the InstantX default (True) the diffusers pipeline encodes
    the control image without the VAE shift, which flowcore's SD3 adapter does not reproduce (reported)."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    from flowcore.testing import tiny_controlnet, tiny_pipeline

    base = tiny_pipeline("sd3")
    stock = tiny_controlnet(base.transformer, seed=1, num_layers=1)
    config = {k: v for k, v in stock.config.items() if k != "_use_default_values"}
    controlnet = SD3ControlNetModel.from_config({**config, "force_zeros_for_pooled_projection": False})
    controlnet.load_state_dict(stock.state_dict())
    return StableDiffusion3ControlNetPipeline(
        transformer=base.transformer, scheduler=base.scheduler, vae=base.vae, text_encoder=base.text_encoder,
        tokenizer=base.tokenizer, text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
        text_encoder_3=base.text_encoder_3, tokenizer_3=base.tokenizer_3, controlnet=controlnet.eval())


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_no_attributes_matches_the_diffusers_controlnet_pipeline(kind):
    """Test 20: same tiny parts, seed and edges: StyleAttrPipeline without attributes = the stock pipeline."""
    from flowcore.testing import tiny_pipeline

    pipe = tiny_pipeline("sd15-controlnet") if kind == "sd15" else _sd3_controlnet_pipe()
    pipe.set_progress_bar_config(disable=True)
    edges = random_edges(1)
    common = dict(num_inference_steps=3, guidance_scale=6.0, height=64, width=64, output_type="pt")
    if kind == "sd15":
        want = pipe("a red circle", image=edges, generator=torch.Generator().manual_seed(0), **common).images
    else:
        # the stock SD3 ControlNet pipeline samples the control image's VAE posterior with the global RNG; flowcore
        # (and style-attr) use its mean, so the comparison runs the stock pipeline with the mean too
        from unittest import mock

        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        with mock.patch.object(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode()):
            from flowcore.images import (
                to_pil,  # a PIL control image is normalised to [-1, 1]; tensors are not
            )

            want = pipe("a red circle", control_image=to_pil(edges)[0], generator=torch.Generator().manual_seed(0),
                        **common).images
    sa = StyleAttrPipeline.from_pipe(pipe)
    got = sa("a red circle", edge_image=edges, generator=torch.Generator().manual_seed(0), **common).images
    assert got.shape == want.shape
    assert ((got - want).norm() / want.norm()) <= 1e-5
    # with an attribute the output moves (the test above is not vacuous)
    attach_random(pipe.controlnet, name="ink")
    moved = sa("a red circle", edge_image=edges, attributes={"width": 1.0}, act_t=0.0,
               generator=torch.Generator().manual_seed(0), **common).images
    assert (moved - want).abs().max() > 1e-4
    sa.unload_attribute("ink")


def test_attribute_keys_and_bad_input(unet_model, edges, tmp_path):
    attach_random(unet_model.controlnet, "outline", name="ink")
    attach_random(unet_model.controlnet, "watercolor", ("wobble", "splatter"), name="wash", seed=4)
    nets = attribute_networks(unet_model.controlnet)
    lam = parse_attributes({"width": 0.5, "wash.splatter": 1.0}, nets)
    assert lam["ink"].tolist() == [0.5] and lam["wash"].tolist() == [0.0, 1.0]
    with pytest.raises(KeyError, match="not one a loaded network was trained on"):
        parse_attributes({"granulation": 0.3}, nets)
    with pytest.raises(KeyError, match="no attribute network 'nope'"):
        parse_attributes({"nope.width": 0.3}, nets)
    pipe = StyleAttrPipeline.from_model(unet_model)
    with pytest.raises(ValueError, match="allowed range"):
        pipe("a cat", edge_image=edges, attributes={"width": 5.0}, num_inference_steps=2)
    with pytest.raises(ValueError, match="edge map"):
        pipe("a cat", attributes={"width": 0.5}, num_inference_steps=2)
    out = pipe("a cat", edge_image=edges, attributes={"width": 0.5}, num_inference_steps=2, output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and out.info["attributes"]["ink"] == [0.5]
    nets["ink"].save_pretrained(tmp_path / "ink")
    pipe.unload_attribute("ink")
    from flowcore.testing import tiny_controlnet, tiny_unet
    from style_attr import AttributeControlNet, BaseMismatchError

    other = tiny_controlnet(tiny_unet(block_out_channels=(32, 64), norm_num_groups=16), seed=1)
    with pytest.raises(BaseMismatchError):
        AttributeControlNet.from_pretrained(tmp_path / "ink", other)
    loaded = pipe.load_attribute(tmp_path / "ink")
    assert loaded.name == "ink"


def test_invert_and_edit_through_the_pipeline(unet_model):
    attach_random(unet_model.controlnet, name="ink", gain=3.0)
    pipe = StyleAttrPipeline.from_model(unet_model)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning):
        inv = pipe.invert(image, "a photo", num_inference_steps=3, num_inner_steps=2, guidance_scale=5.0)
    rec = pipe.edit(inv, {"width": 0.0}, output_type="latent").images
    assert torch.equal(rec, inv.reconstruction)
    edited = pipe.edit(inv, {"width": 1.0}, output_type="pt")
    assert edited.images.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="method"):
        pipe.invert(image, method="magic", num_inference_steps=2)
