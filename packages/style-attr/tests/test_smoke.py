"""The smallest end-to-end run (used by ``nox -s isolated``: only style-attr and its declared dependencies)."""

from __future__ import annotations

import torch

import style_attr
from style_attr import AttributeControlNet, AttributeTerm, sample
from style_attr.testing import attach_random, random_edges, tiny_unet_model


def test_attach_sample_save_load(tmp_path):
    torch.set_num_threads(1)
    assert style_attr.__version__
    model = tiny_unet_model()
    net = attach_random(model.controlnet, name="ink")
    edges = random_edges(1)
    cond, uncond = model.encode_prompt(["a red circle"]), model.encode_prompt([""])
    sched = model.schedule(3, height=64, width=64)
    x = model.prepare_noise(1, 64, 64, generator=torch.Generator().manual_seed(0))
    base = sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges)
    edited = sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges,
                    terms=[AttributeTerm("ink", 1.0, act_t=0.0)])
    assert (edited - base).abs().max() > 1e-4
    net.save_pretrained(tmp_path / "ink")
    net.detach()
    loaded = AttributeControlNet.from_pretrained(tmp_path / "ink", model.controlnet)
    again = sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges,
                   terms=[AttributeTerm("ink", 1.0, act_t=0.0)])
    assert torch.equal(again, edited)
    loaded.detach()
