"""Plumbing (toyworld.md §10.1): randomly initialised toys run through the stock diffusers pipelines."""

from __future__ import annotations

import pytest
import torch

from flowcore.toy.bundle import ToyBundle, build
from flowcore.toy.export import save_ip_adapter
from flowcore.toy.models import make_ip_adapter_state_dict
from flowcore.toy.trainer import pack_latents

REFERENCE = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _finite_image(images: torch.Tensor) -> None:
    assert images.shape == (1, 3, 32, 32)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("name", ["toy-sd3", "toy-flux", "toy-unet"])
def test_text_to_image_pipelines_run_two_steps(name):
    bundle = build(name)
    pipe = bundle.pipeline()
    expected = {"toy-sd3": "StableDiffusion3Pipeline", "toy-flux": "FluxPipeline",
                "toy-unet": "StableDiffusionPipeline"}[name]
    assert type(pipe).__name__ == expected
    _finite_image(bundle.generate("a red circle on a blue background", steps=2))
    adapter = bundle.adapter()
    assert adapter.is_toy and adapter.model_id == name


def test_kontext_pipeline_feeds_target_and_clean_reference_tokens():
    """FluxKontextPipeline gets [target ; reference] with ids (0,r,c) / (1,r,c); the reference tokens are the
    pixel-VAE latents 2·img − 1 of the reference (the pipeline takes a 3-channel tensor as latents as is)."""
    bundle = build("toy-kontext")
    seen = {}

    def capture(module, args, kwargs):
        seen.setdefault("hidden", kwargs["hidden_states"].clone())
        seen.setdefault("ids", kwargs["img_ids"].clone())

    handle = bundle.denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        _finite_image(bundle.generate("make the circle red", steps=2, image=REFERENCE))
    finally:
        handle.remove()
    assert type(bundle.pipeline()).__name__ == "FluxKontextPipeline"
    assert seen["hidden"].shape == (1, 512, 12)
    assert torch.equal(seen["ids"][:256, 0], torch.zeros(256)) and torch.equal(seen["ids"][256:, 0], torch.ones(256))
    assert torch.allclose(seen["hidden"][:, 256:], pack_latents(REFERENCE * 2 - 1), atol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        bundle.generate("make the circle red", steps=2)


def test_controlnet_pipeline_runs_two_steps():
    bundle = build("toy-unet", controlnet=True)
    assert type(bundle.pipeline()).__name__ == "StableDiffusionControlNetPipeline"
    _finite_image(bundle.generate("a red circle", steps=2, image=(REFERENCE > 0.5).float()))


def test_ip_adapter_loads_with_stock_load_ip_adapter(tmp_path):
    """The original key layout loads through pipe.load_ip_adapter; every site's to_k_ip starts as that site's
    text to_k, which pins the key-id ↔ site mapping to diffusers' own loader."""
    bundle = build("toy-unet", ip_adapter=False)
    state = make_ip_adapter_state_dict(bundle.denoiser)
    save_ip_adapter(state, tmp_path, dtype=torch.float32)
    pipe = bundle.pipeline()
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip_adapter.safetensors",
                         image_encoder_folder=None)
    sites = [n for n in pipe.unet.attn_processors if n.endswith("attn2.processor")]
    assert len(sites) == 7
    for name in sites:
        processor = pipe.unet.attn_processors[name]
        attention = pipe.unet.get_submodule(name.removesuffix(".processor"))
        assert torch.equal(processor.to_k_ip[0].weight, attention.to_k.weight)
        assert torch.equal(processor.to_v_ip[0].weight, attention.to_v.weight)
    with_ip = build("toy-unet", ip_adapter=True, preset="ci")  # build's own route (generate: test_weights)
    assert with_ip.image_encoder is not None and with_ip.ip_adapter
    embeds = with_ip.encode_ip_image(REFERENCE)
    assert embeds.shape == (1, 1, 128)
    negative = torch.zeros_like(embeds)
    out = pipe(prompt_embeds=bundle.encode_prompt(["a red circle"])[0],
               negative_prompt_embeds=bundle.encode_prompt([""])[0], ip_adapter_image_embeds=[torch.cat([negative, embeds])],
               num_inference_steps=2, output_type="pt", height=32, width=32,
               generator=torch.Generator().manual_seed(0)).images
    _finite_image(out)


def test_encode_prompt_shapes_and_the_negative_is_the_empty_text():
    bundle: ToyBundle = build("toy-sd3")
    seq, pooled = bundle.encode_prompt(["a red circle", "a blue square"])
    assert seq.shape == (2, 32, 128) and pooled.shape == (2, 128)
    empty_seq, empty_pooled = bundle.encode_prompt("")
    assert empty_seq.abs().sum() > 0 and empty_pooled.abs().sum() > 0  # the encoding of "", not zeros


def test_build_checks_names_and_options():
    with pytest.raises(ValueError, match="unknown toy model"):
        build("toy-sdxl")
    with pytest.raises(ValueError, match="only for toy-unet"):
        build("toy-sd3", controlnet=True)
    clip = build("toy-clip")
    assert clip.denoiser is None and clip.image_encoder is not None
    with pytest.raises(ValueError, match="no pipeline"):
        clip.pipeline()
    a, b = build("toy-sd3", preset="ci"), build("toy-sd3", preset="ci")
    assert all(torch.equal(p, q) for p, q in zip(a.denoiser.parameters(), b.denoiser.parameters()))
