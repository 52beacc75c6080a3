"""Benchmarks (§8): ratios measured side by side in one run with ``flowcore.bench.compare`` (medians of ≥ 5
repeats after warm-up). CPU: tiny SD1.5-shaped UNet (8×8 latents) and random toy-unet; ``device="cuda"``: random
SD1.5-shaped UNet at 512² (fp16) and SD3.5-medium-shaped transformer at 1024² (bf16), no downloads.

B1 composite sampler vs plain ControlNet CFG (same S) · B2 shared base, batched (1+1 calls per step) vs naive
(4+4 calls, a separate C_A copy) · B3 C_A vs C FLOPs against the analytic count · B4 training step β=5 vs β=0 ·
B5 null-parameter vs plain vs directedit inversion (time and reconstruction MSE) · B6 filter throughput (512² photos).
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from flowcore.adapters import ControlInput
from flowcore.bench import compare, count_flops, device_info
from flowcore.sampling import step as flow_step
from flowcore.seeding import seeded_init
from style_attr.composition import (
    AttributeTerm,
    RowBlock,
    call_blocks,
    edit_inverted,
    null_parameter_inversion,
    plain_inversion,
    sample,
)
from style_attr.network import attribute_networks
from style_attr.testing import attach_random, random_edges, tiny_sd3_model, tiny_unet_model

__all__ = ["run_benchmarks"]


def _models(device: str, quick: bool) -> list[tuple[str, Any, int]]:
    """``(label, model, image size)`` for the device."""
    if device.startswith("cuda"):
        return [("sd15-shaped 512² fp16", _gpu_sd15(device), 512), ("sd35m-shaped 1024² bf16", _gpu_sd35m(device), 1024)]
    models = [("tiny sd15 64²", tiny_unet_model(), 64)]
    if not quick:
        models.append(("tiny sd3 64²", tiny_sd3_model(), 64))
    return models


def _gpu_sd15(device: str) -> Any:
    from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel

    from flowcore.adapters import UNetModel
    from flowcore.testing import tiny_vae
    from style_attr.testing import fake_prompt_encoder

    unet = UNet2DConditionModel(cross_attention_dim=768).to(device, torch.float16)
    controlnet = ControlNetModel.from_unet(unet).to(device, torch.float16)
    for m in controlnet.controlnet_down_blocks:
        torch.nn.init.normal_(m.weight, std=0.01)
    vae = tiny_vae("sd").to(device, torch.float16)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return UNetModel(unet, vae, sched, prompt_encoder=fake_prompt_encoder(768, None, 77), controlnet=controlnet)


def _gpu_sd35m(device: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from flowcore.adapters import SD3Model
    from flowcore.testing import tiny_vae
    from style_attr.models import sd3_controlnet_for
    from style_attr.testing import fake_prompt_encoder

    tr = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                               attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                               caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                               dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    cn = sd3_controlnet_for(tr, num_layers=6)
    for m in cn.controlnet_blocks:
        torch.nn.init.normal_(m.weight, std=0.01)
    vae = tiny_vae("sd3", latent_channels=16).to(device, torch.bfloat16)
    return SD3Model(tr.to(device, torch.bfloat16), vae, FlowMatchEulerDiscreteScheduler(shift=3.0),
                    prompt_encoder=fake_prompt_encoder(4096, 2048, 154), controlnet=cn.to(device, torch.bfloat16))


def _inputs(model: Any, size: int) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    cond, uncond = model.encode_prompt(["a photo"]), model.encode_prompt([""])
    edges = random_edges(1, size).to(model.device, torch.float32)
    x = model.prepare_noise(1, size, size, generator=torch.Generator().manual_seed(0))
    return cond.to(model.device), uncond.to(model.device), edges, x


def b1_composite(model: Any, size: int, steps: int, repeats: int, device: str) -> dict[str, Any]:
    cond, uncond, edges, x = _inputs(model, size)
    sched = model.schedule(steps, height=size, width=size)
    term = [AttributeTerm("attr", 1.0, act_t=0.1)]
    table = compare({
        "plain ControlNet CFG": lambda: sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges),
        "composite (act_t 0.1)": lambda: sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges,
                                                terms=term),
    }, baseline="plain ControlNet CFG", repeats=repeats, device=device)
    expected = 1 + (1 - (-(-steps // 10)) / steps)
    return {"table": table.to_dict(), "text": table.format(), "cost_ratio": 1 / table.ratio("composite (act_t 0.1)"),
            "expected_compute_bound": expected}


def b2_shared_vs_naive(model: Any, size: int, steps: int, repeats: int, device: str) -> dict[str, Any]:
    cond, uncond, edges, x = _inputs(model, size)
    sched = model.schedule(steps, height=size, width=size)
    shared_net = next(iter(attribute_networks(model.controlnet).values()))
    separate = copy.deepcopy(model.controlnet)  # the naive setup: a second ControlNet carrying C_A
    sep_net = attribute_networks(separate)[shared_net.name]
    control = ControlInput(image=edges)
    tok2, ref2 = sep_net.encode(1.0).detach(), sep_net.encode(0.0).detach()

    def naive() -> None:
        with torch.no_grad():
            z = x
            for i in range(steps):
                t = sched.t(i)
                u = call_blocks(model, z, t, [RowBlock(uncond)], control)[0]
                c = call_blocks(model, z, t, [RowBlock(cond)], control)[0]
                sep = ControlInput(image=edges, controlnet=separate)
                a = call_blocks(model, z, t, [RowBlock(uncond, sep_net, tok2)], sep)[0]
                b = call_blocks(model, z, t, [RowBlock(uncond, sep_net, ref2)], sep)[0]
                z = flow_step(z, u + 7.5 * (c - u) + (a - b), sched, i, i + 1)

    def batched() -> None:
        sample(model, x, sched, cond, w1=7.5, uncond=uncond, control_image=edges,
               terms=[AttributeTerm(shared_net.name, 1.0, act_t=0.0)])

    table = compare({"naive 4+4 calls, C_A copy": naive, "shared base, 1+1 calls": batched},
                    baseline="naive 4+4 calls, C_A copy", repeats=repeats, device=device, memory=device.startswith("cuda"))
    params = sum(p.numel() for p in separate.parameters())
    return {"table": table.to_dict(), "text": table.format(), "extra_params_naive": params}


def b3_flops(model: Any, size: int) -> dict[str, Any]:
    cond, _, edges, x = _inputs(model, size)
    net = next(iter(attribute_networks(model.controlnet).values()))
    t = model.schedule(4, height=size, width=size).t(0)

    def base() -> None:
        with torch.no_grad():
            model.predict(x, t, cond, control=ControlInput(image=edges))

    def with_tokens() -> None:
        with torch.no_grad(), net.tokens(1.0):
            model.predict(x, t, cond, control=ControlInput(image=edges))

    f_base, f_attr = count_flops(base), count_flops(with_tokens)
    analytic = 0
    k, d = net.embedder.num_tokens, net.token_dim
    for site, layer in zip(net.sites, net.layers.values()):
        n = _site_tokens(model, site, x)
        dim = layer.dim
        analytic += 2 * n * dim * dim + 2 * k * d * dim + 2 * n * k * dim  # MACs
    return {"flops_base": f_base, "flops_with_attribute": f_attr, "extra_flops": f_attr - f_base,
            "extra_fraction": (f_attr - f_base) / f_base, "analytic_extra_flops_excl_embedder": 2 * analytic}


def _site_tokens(model: Any, site: str, x: torch.Tensor) -> int:
    h, w = x.shape[-2:]
    if model.family == "rf":
        p = model.patch_size
        return (h // p) * (w // p)
    level = int(site.split(".")[1]) if site.startswith("down_blocks") else 3
    scale = 2 ** min(level, len(model.controlnet.config.block_out_channels) - 1)
    return (h // scale) * (w // scale)


def b4_training(repeats: int, device: str) -> dict[str, Any]:
    from style_attr.filters import AttributeSpec
    from style_attr.network import AttributeControlNet
    from style_attr.training import AttributeObjective, TrainConfig

    model = tiny_unet_model()
    net = AttributeControlNet.attach(model.controlnet, AttributeSpec.for_family("outline"), hidden_dim=32)
    net.freeze_base()
    g = torch.Generator().manual_seed(0)
    batch = {"target": torch.rand(4, 3, 64, 64, generator=g), "reference": torch.rand(4, 3, 64, 64, generator=g),
             "edges": random_edges(4), "lam": torch.rand(4, 1, generator=g), "captions": ["a"] * 4}

    def step(beta: float, ckpt: bool) -> Any:
        obj = AttributeObjective(model, net, TrainConfig(data="-", output_dir="-", beta=beta))

        def run() -> None:
            if ckpt:  # the denoiser only (as `train --gradient-checkpointing` does)
                model.denoiser.enable_gradient_checkpointing()
            obj(batch, 0, [0, 1, 2, 3]).total.backward()
            if ckpt:
                model.denoiser.disable_gradient_checkpointing()
        return run

    table = compare({"beta=0": step(0.0, False), "beta=5": step(5.0, False), "beta=5 + checkpointing": step(5.0, True)},
                    baseline="beta=0", repeats=repeats, device="cpu")
    net.detach()
    return {"table": table.to_dict(), "text": table.format()}


def b5_inversion(model: Any, size: int, steps: int, device: str) -> dict[str, Any]:
    cond, uncond, edges, _ = _inputs(model, size)
    sched = model.schedule(steps, height=size, width=size)
    x0 = torch.randn(model.latent_shape(1, size, size), generator=torch.Generator().manual_seed(3)) * 0.8
    x0 = x0.to(model.device)
    rows: dict[str, dict[str, float]] = {}
    methods = {"plain": lambda: plain_inversion(model, x0, sched, cond, w1=5.0, uncond=uncond, control_image=edges),
               "null_param": lambda: null_parameter_inversion(model, x0, sched, cond, [AttributeTerm("attr", 0.0, act_t=0)],
                                                              w1=5.0, uncond=uncond, control_image=edges,
                                                              num_inner_steps=10)}
    if model.family == "rf":
        from style_attr.composition import directedit_inversion

        methods["directedit"] = lambda: directedit_inversion(model, x0, sched, cond, w1=5.0, uncond=uncond,
                                                             control_image=edges)
    for name, run in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            inv = run()
            inv_s = time.perf_counter() - start
            rec = edit_inverted(model, inv)
        rows[name] = {"inversion_s": inv_s, "mse": float(((rec - x0) ** 2).mean())}
    base = rows["plain"]["inversion_s"]
    for row in rows.values():
        row["time_vs_plain"] = row["inversion_s"] / base
    return {"rows": rows, "note": "one run each (timings on a shared CPU are noisy); MSE is the reconstruction error"}


def b6_filters(repeats: int) -> dict[str, Any]:
    from style_attr.filters import FAMILY_PARAMS, get_family

    images = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    providers = {f: (lambda f=f: get_family(f)(images, 0.7, seed=1)) for f in FAMILY_PARAMS}
    table = compare(providers, baseline="outline", repeats=repeats, device="cpu")
    return {"images_per_s": {row["name"]: 2 / (row["median_ms"] / 1000) for row in table.rows},
            "text": table.format()}


def run_benchmarks(output_dir: str | Path, *, device: str = "cpu", quick: bool = False,
                   only: list[str] | None = None) -> dict[str, Any]:
    """Run B1–B6 (or ``only``), print the tables and write ``bench.json``; returns the summary. Random weights
    and inputs are seeded inside ``fork_rng``: the caller's global RNG state is left as it was."""
    from flowcore.io import write_json
    with seeded_init(0):
        summary, want = _run_all(device, quick, only)
    out = Path(output_dir)
    write_json(out / "bench.json", summary)
    return {"output": str(out / "bench.json"), "benchmarks": sorted(want),
            "device": summary["device"].get("device")}


def _run_all(device: str, quick: bool, only: list[str] | None) -> tuple[dict[str, Any], set[str]]:
    repeats = 3 if quick else 5
    steps = 6 if quick else 10
    want = {b.upper() for b in only} if only else {"B1", "B2", "B3", "B4", "B5", "B6"}
    summary: dict[str, Any] = {"device": device_info(), "quick": quick, "results": {}}
    for label, model, size in _models(device, quick):
        attach_random(model.controlnet, hidden_dim=32)
        res: dict[str, Any] = {}
        if "B1" in want:
            res["B1"] = b1_composite(model, size, steps, repeats, device)
        if "B2" in want:
            res["B2"] = b2_shared_vs_naive(model, size, steps, repeats, device)
        if "B3" in want:
            res["B3"] = b3_flops(model, size)
        if "B5" in want and not device.startswith("cuda"):
            res["B5"] = b5_inversion(model, size, 4 if quick else 8, device)
        summary["results"][label] = res
        for key, value in res.items():
            if "text" in value:
                print(f"[{label}] {key}\n{value['text']}\n")
    if "B4" in want:
        summary["results"]["B4 training (tiny sd15)"] = b4_training(repeats, "cpu")
        print(summary["results"]["B4 training (tiny sd15)"]["text"])
    if "B6" in want and not device.startswith("cuda"):
        summary["results"]["B6 filters 512²"] = b6_filters(repeats)
        print(summary["results"]["B6 filters 512²"]["text"])
    return summary, want
