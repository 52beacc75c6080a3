"""flowcore.testing: tiny models are deterministic, small, offline, and every tiny pipeline runs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import socket

import pytest
import torch
from PIL import Image

from flowcore.testing import (
    PIPELINE_KINDS,
    CallCounter,
    attach_ip_adapter,
    qwen_edit_resolution,
    tiny_controlnet,
    tiny_flux,
    tiny_image_encoder,
    tiny_ip_adapter,
    tiny_pipeline,
    tiny_qwen_image_edit,
    tiny_sd3,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)

pytest.importorskip("transformers")


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection attempt fails the test: everything must be built in memory."""

    def refuse(*args, **kwargs):
        raise AssertionError("flowcore.testing tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_factories_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    first, second, other = tiny_sd3(), tiny_sd3(), tiny_sd3(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same_weights(first, second) and not _same_weights(first, other)
    assert not _same_weights(tiny_flux(), tiny_flux(kontext=True))


def test_sizes_and_overrides():
    models = {
        "sd3": tiny_sd3(), "flux": tiny_flux(), "qwen": tiny_qwen_image_edit(), "unet": tiny_unet(),
        "unet-xl": tiny_unet("sdxl"), "vae": tiny_vae(), "vae-qwen": tiny_vae("qwen"),
        "image-encoder": tiny_image_encoder(), "qwen-vl": tiny_text_encoder("qwen"), "t5": tiny_text_encoder("t5"),
    }
    for name, model in models.items():
        assert _params(model) < 1_000_000, name
    sd3 = models["sd3"]
    assert sd3.config.dual_attention_layers == (0,) and sd3.config.qk_norm == "rms_norm"
    assert models["flux"].config.guidance_embeds
    assert models["unet-xl"].config.addition_embed_type == "text_time"
    big = tiny_sd3(num_attention_heads=4, attention_head_dim=32, caption_projection_dim=128, num_layers=1)
    assert big.config.num_layers == 1 and big.config.caption_projection_dim == 128
    assert tiny_sd3(attention_head_dim=8).config.caption_projection_dim == 16  # follows heads × head_dim
    with pytest.raises(TypeError):
        tiny_sd3(not_a_config_key=1)
    with pytest.raises(ValueError, match="unknown UNet kind"):
        tiny_unet("sd2")


@pytest.mark.parametrize("kind", ["sd", "sd3", "flux", "qwen"])
def test_vaes_downsample_by_eight(kind):
    vae = tiny_vae(kind)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if kind == "qwen":
        x = x[:, :, None]  # (B,C,T,H,W)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean
    assert latents.shape[1] == 4 and latents.shape[-2:] == (8, 8)


def test_controlnets_act_unless_zero_init():
    unet = tiny_unet()
    sample, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    text, cond = torch.randn(1, 5, 32), torch.rand(1, 3, 64, 64)
    for zero_init in (False, True):
        controlnet = tiny_controlnet(unet, zero_init=zero_init)
        with torch.no_grad():
            down, mid = controlnet(sample, t, text, cond, return_dict=False)
        magnitude = max(float(r.abs().max()) for r in [*down, mid])
        assert (magnitude == 0.0) == zero_init
    sd3 = tiny_sd3()
    sd3_controlnet = tiny_controlnet(sd3)
    assert sd3.config.num_layers == 2 and sd3_controlnet.config.num_layers == 1


def test_ip_adapter_state_dict_layout_and_loading():
    unet = tiny_unet("sdxl")
    state = tiny_ip_adapter(unet)
    assert set(state["image_proj"]) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert state["image_proj"]["proj.weight"].shape == (4 * 64, 32)
    cross_sites = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    expected = {f"{k}.to_{p}_ip.weight" for k in range(1, 2 * len(cross_sites), 2) for p in "kv"}
    assert set(state["ip_adapter"]) == expected
    attach_ip_adapter(unet, state)
    assert unet.config.encoder_hid_dim_type == "ip_image_proj"


def test_call_counter_counts_calls_and_rows():
    layer = torch.nn.Linear(3, 3)
    with CallCounter(layer) as counter:
        layer(torch.zeros(4, 3))
        layer(input=torch.zeros(2, 3))
    layer(torch.zeros(1, 3))  # after exit: not counted
    assert (counter.calls, counter.rows, counter.per_call) == (2, 6, [4, 2])


def _call_kwargs(kind: str, generator: torch.Generator) -> dict:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    kwargs: dict = dict(prompt="a red circle", num_inference_steps=2, height=64, width=64, generator=generator,
                        output_type="pt")
    if kind in ("sd3", "flux", "flux-kontext"):
        kwargs["max_sequence_length"] = 16
    if kind == "flux-kontext":
        kwargs.update(image=image, max_area=64 * 64, _auto_resize=False)
    if kind == "qwen-image-edit":
        kwargs.update(image=image, negative_prompt="blurry", true_cfg_scale=2.0)
    if kind.endswith("controlnet"):
        kwargs["image"] = image
    return kwargs


@pytest.mark.parametrize("kind", PIPELINE_KINDS)
def test_tiny_pipeline_runs_two_steps_offline(kind, no_network):
    pipe = tiny_pipeline(kind)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    with CallCounter(denoiser) as counter, qwen_edit_resolution(64 * 64):
        images = pipe(**_call_kwargs(kind, torch.Generator().manual_seed(0))).images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert float(images.std()) > 1e-3  # not a constant image
    assert counter.calls == 2 * (2 if kind == "qwen-image-edit" else 1)  # Qwen true CFG: separate calls
    again = pipe(**_call_kwargs(kind, torch.Generator().manual_seed(0))).images if kind == "sd3" else None
    if again is not None:
        assert torch.equal(again, images)  # same seed, same pipeline → same image


def test_ip_adapter_on_a_pipeline_changes_the_output(no_network):
    pipe = attach_ip_adapter(tiny_pipeline("sd15"), scale=1.0)
    kwargs = _call_kwargs("sd15", torch.Generator().manual_seed(0))
    kwargs["ip_adapter_image"] = Image.new("RGB", (64, 64), (0, 0, 255))
    with_ip = pipe(**kwargs).images
    pipe.set_ip_adapter_scale(0.0)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    without_ip = pipe(**kwargs).images
    assert (with_ip - without_ip).abs().max() > 1e-3


def test_tiny_pipeline_component_overrides():
    pipe = tiny_pipeline("flux", transformer={"num_single_layers": 2})
    assert pipe.transformer.config.num_single_layers == 2
    transformer = tiny_flux(guidance_embeds=False)
    assert tiny_pipeline("flux", transformer=transformer).transformer is transformer
    with pytest.raises(TypeError, match="unknown component"):
        tiny_pipeline("sd15", transformer={})
    with pytest.raises(ValueError, match="unknown pipeline kind"):
        tiny_pipeline("sd2")
