"""``feat-tryon bench`` (spec §8): FEAT's variants against the baseline, measured side by side in one run.

Rows: ``two_pass`` batched and unbatched, ``residual_mask``, an empty removal region (``two_pass`` with
``M̄_r = ∅``), and the once-per-image overheads (OFR's extra VAE encode, CSPE's extra encoder image, the masks).
Per row: wall-time ratio (``flowcore.bench.compare``, medians after a warm-up, providers interleaved), UNet-sample
ratio, FLOP ratio (``flowcore.bench.count_flops``) and, on CUDA, peak-memory ratio. No timing is asserted anywhere.

CPU (2 threads): the tiny SDXL-like UNet + ControlNet at latent 32² and 64², B = 1; toy-unet at its native size.
GPU (``--full-size``): the full SDXL UNet + ControlNet built from the config with random weights (nothing is
downloaded), fp16, 1024², 10 steps, 3 repeats; the prediction two_pass/baseline = (2+r)/(1+r) = 1.69 in FLOPs with
r = F_ControlNet/F_UNet = 0.447 is printed next to the measurement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from feat_tryon.config import FEATConfig
from feat_tryon.masks import RegionMasks, region_masks
from feat_tryon.ranf import CallStats, ranf_sample

__all__ = ["PREDICTED_TWO_PASS", "bench_loop", "full_sdxl_adapter", "run_bench"]

R_SDXL = 0.447
PREDICTED_TWO_PASS = (2 + R_SDXL) / (1 + R_SDXL)

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"preset": "baseline"},
    "two_pass": {"preset": "feat"},
    "two_pass_unbatched": {"preset": "feat", "batch_passes": False},
    "residual_mask": {"preset": "feat_residual_mask"},
    "empty_removal": {"preset": "feat", "empty_removal": True},
}


def _masks(grid: int, f: int, b: int, *, empty_removal: bool) -> RegionMasks:
    """A shrinking edit (non-empty removal region), or one whose removal region is empty."""
    size = grid * f
    mp = torch.zeros(b, 1, size, size)
    ms = torch.zeros(b, 1, size, size)
    lo, hi = size // 4, 3 * size // 4
    mp[..., lo:hi, lo:hi] = 1
    ms[..., lo:hi, lo + size // 8:hi - size // 8] = 1
    if empty_removal:
        return region_masks(torch.zeros_like(mp), ms, (grid, grid))
    return region_masks(mp, ms, (grid, grid))


def _conditions(adapter: Any, b: int, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    cond = adapter.encode_prompt(["a red and white striped t-shirt"] * b).to(device, dtype)
    uncond = adapter.encode_prompt([""] * b).to(device, dtype)
    embeds = None
    if getattr(adapter.denoiser, "encoder_hid_proj", None) is not None:
        from feat_tryon.core import _ip_embed_dim

        embeds = torch.randn(b, 2, _ip_embed_dim(adapter), generator=torch.Generator().manual_seed(1)).to(device, dtype)
    return cond, uncond, embeds


def bench_loop(adapter: Any, *, grid: int, steps: int, batch: int = 1, repeats: int = 5, warmup: int = 1,
               device: str = "cpu", flops: bool = True, memory: bool = False) -> list[dict[str, Any]]:
    """Time the RANF loop of every variant on ``adapter`` at latent ``grid``² and return one row per variant."""
    from flowcore.adapters import ControlInput
    from flowcore.bench import compare, count_flops

    dev = torch.device(device)
    f = int(adapter.vae_scale_factor)
    b = batch
    cond, uncond, embeds = _conditions(adapter, b, dev, adapter.dtype)
    c = adapter.latent_channels() if hasattr(adapter, "latent_channels") else 4
    z_tilde = torch.randn(b, c, grid, grid, generator=torch.Generator().manual_seed(0)).to(dev)
    control = None
    if adapter.controlnet is not None:
        image = torch.rand(b, 3, grid * f, grid * f, generator=torch.Generator().manual_seed(2)).to(dev)
        control = ControlInput(image=image, scale=0.7)
    masks_full = _to(_masks(grid, f, b, empty_removal=False), dev)
    masks_empty = _to(_masks(grid, f, b, empty_removal=True), dev)
    stats: dict[str, CallStats] = {}
    providers: dict[str, Callable[[], Any]] = {}
    for name, spec in VARIANTS.items():
        config = FEATConfig.preset(spec["preset"], num_inference_steps=steps,
                                   **({"batch_passes": False} if spec.get("batch_passes") is False else {}))
        m = masks_empty if spec.get("empty_removal") else masks_full
        stats[name] = CallStats()

        def run(config: FEATConfig = config, m: RegionMasks = m, st: CallStats | None = None) -> Any:
            return ranf_sample(adapter, z_tilde, m, cond, uncond=uncond, config=config, control=control,
                               image_embeds=embeds, generator=torch.Generator(device="cpu").manual_seed(0),
                               stats=st)

        run(st=stats[name])
        providers[name] = run
    table = compare(providers, baseline="baseline", repeats=repeats, warmup=warmup, device=dev, memory=memory)
    flop_counts: dict[str, int] = {}
    if flops:
        for name, spec in VARIANTS.items():
            config = FEATConfig.preset(spec["preset"], num_inference_steps=1,
                                       **({"batch_passes": False} if spec.get("batch_passes") is False else {}))
            m = masks_empty if spec.get("empty_removal") else masks_full
            flop_counts[name] = count_flops(lambda config=config, m=m: ranf_sample(
                adapter, z_tilde, m, cond, uncond=uncond, config=config, control=control, image_embeds=embeds,
                generator=torch.Generator(device="cpu").manual_seed(0)))
    base = table["baseline"]
    rows = []
    for name in VARIANTS:
        row = table[name]
        samples = stats[name].unet_samples / max(1, stats["baseline"].unet_samples)
        mem = None
        if row["peak_mem_mb"] and base["peak_mem_mb"]:
            mem = row["peak_mem_mb"] / base["peak_mem_mb"]
        rows.append({
            "variant": name, "grid": grid, "batch": b, "steps": steps, "median_ms": row["median_ms"],
            "time_ratio": row["median_ms"] / base["median_ms"],
            "unet_sample_ratio": samples,
            "controlnet_sample_ratio": stats[name].controlnet_samples / max(1, stats["baseline"].controlnet_samples),
            "flop_ratio": (flop_counts[name] / flop_counts["baseline"]) if flop_counts else None,
            "peak_mem_ratio": mem,
        })
    return rows


def _to(masks: RegionMasks, device: torch.device) -> RegionMasks:
    out = copy.copy(masks)
    for field in ("garment", "sketch", "operating", "op", "new", "removal", "keep", "garment_latent"):
        setattr(out, field, getattr(masks, field).to(device))
    return out


def bench_overheads(adapter: Any, *, size: int, repeats: int = 5, device: str = "cpu") -> list[dict[str, Any]]:
    """Once-per-image work of FEAT relative to the baseline's: VAE encode (2 images vs 1), image encoder (2 vs 1),
    masks (fill + dilate + pool)."""
    from feat_tryon.masks import fill_sketch
    from flowcore.bench import compare

    dev = torch.device(device)
    person = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    sketch = torch.zeros(1, 1, size, size, device=dev)
    lo, hi = size // 4, 3 * size // 4
    sketch[..., lo, lo:hi] = 1
    sketch[..., hi - 1, lo:hi] = 1
    sketch[..., lo:hi, lo] = 1
    sketch[..., lo:hi, hi - 1] = 1
    f = adapter.vae_scale_factor
    providers: dict[str, Callable[[], Any]] = {
        "vae_encode_1": lambda: adapter.encode_image(person),
        "vae_encode_2 (OFR)": lambda: adapter.encode_image(torch.cat([person, person])),
        "masks": lambda: region_masks(torch.roll(sketch, 1, -1), fill_sketch(sketch), (size // f, size // f)),
    }
    if getattr(adapter, "image_encoder", None) is not None:
        providers["encoder_1"] = lambda: adapter.encode_ip_image(person)
        providers["encoder_2 (CSPE)"] = lambda: adapter.encode_ip_image(torch.cat([person, person]))
    table = compare(providers, baseline="vae_encode_1", repeats=repeats, warmup=1, device=dev)
    return [{"overhead": r["name"], "median_ms": r["median_ms"]} for r in table.rows]


def _tiny_sdxl_adapter(device: str) -> Any:
    from diffusers import DDIMScheduler

    from flowcore.adapters import Conditioning, UNetModel
    from flowcore.testing import tiny_controlnet, tiny_ip_adapter, tiny_unet, tiny_vae

    unet = tiny_unet("sdxl", block_out_channels=(32, 64), layers_per_block=2, transformer_layers_per_block=(1, 2),
                     cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    controlnet = tiny_controlnet(unet)
    unet._load_ip_adapter_weights([tiny_ip_adapter(unet, image_embed_dim=32)])

    def encode(prompts: list[str], **_: Any) -> Conditioning:
        g = torch.Generator().manual_seed(0)
        return Conditioning(torch.randn(len(prompts), 77, 64, generator=g), torch.randn(len(prompts), 32, generator=g))

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    adapter = UNetModel(unet.to(device), tiny_vae("sdxl").to(device), scheduler, prompt_encoder=encode,
                        model_id="tiny-sdxl", controlnet=controlnet.to(device),
                        image_encoder=lambda x: torch.zeros(x.shape[0], 1, 32, device=x.device))
    return adapter


def full_sdxl_adapter(device: str, *, config: dict[str, Any] | None = None,
                      dtype: torch.dtype = torch.float16) -> Any:
    """The SDXL UNet (default: the full config) and a ControlNet of the same architecture
    (``ControlNetModel.from_unet``), PyTorch's default random init, built directly on ``device`` in ``dtype``;
    prompts are random (77 × cross-attention width) rows. Nothing is downloaded."""
    from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel

    from feat_tryon.reference_configs import SDXL_UNET_CONFIG
    from flowcore.adapters import Conditioning, UNetModel
    from flowcore.testing import tiny_vae

    cfg = dict(config or SDXL_UNET_CONFIG)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
        controlnet = ControlNetModel.from_unet(unet)
    unet, controlnet = unet.to(dtype).eval(), controlnet.to(dtype).eval()
    width = int(cfg["cross_attention_dim"])
    pooled = int(cfg["projection_class_embeddings_input_dim"]) - 6 * int(cfg["addition_time_embed_dim"])

    def encode(prompts: list[str], **_: Any) -> Conditioning:
        g = torch.Generator().manual_seed(0)
        n = len(prompts)
        return Conditioning(torch.randn(n, 77, width, generator=g).to(device, dtype),
                            torch.randn(n, pooled, generator=g).to(device, dtype))

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return UNetModel(unet, tiny_vae("sdxl").to(device), scheduler, prompt_encoder=encode, model_id="sdxl-random",
                     controlnet=controlnet)


def _toy_adapter(device: str) -> Any:
    from flowcore import toy

    return toy.build("toy-unet", random_init=True, controlnet=True, ip_adapter=True).to(device).eval().adapter()


def _format(rows: list[dict[str, Any]]) -> str:
    cols = ["model", "variant", "grid", "batch", "steps", "median_ms", "time_ratio", "unet_sample_ratio",
            "controlnet_sample_ratio", "flop_ratio", "peak_mem_ratio"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_bench(output_dir: str | Path, *, sizes: list[int] | None = None, steps: int = 20, repeats: int = 5,
              threads: int = 2, device: str = "cpu", full_size: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the benchmark rows and write ``bench.json`` / ``bench.md`` (atomically) into ``output_dir``."""
    from flowcore.bench import device_info
    from flowcore.io import atomic_write, write_json

    del seed  # every input has its own seeded generator; no global seeding
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    overheads: list[dict[str, Any]] = []
    try:
        if full_size:
            if not device.startswith("cuda"):
                raise ValueError("--full-size builds the full SDXL UNet: run it with --device cuda")
            adapter = full_sdxl_adapter(device)
            for r in bench_loop(adapter, grid=128, steps=10, batch=1, repeats=3, warmup=0, device=device,
                                memory=True):
                rows.append({"model": "sdxl (random, fp16, 1024²)", **r})
        else:
            adapter = _tiny_sdxl_adapter(device)
            for grid in sizes or [32, 64]:
                for r in bench_loop(adapter, grid=grid, steps=steps, repeats=repeats, device=device,
                                    memory=device.startswith("cuda")):
                    rows.append({"model": "tiny-sdxl", **r})
            toy_adapter = _toy_adapter(device)
            for r in bench_loop(toy_adapter, grid=16, steps=steps, repeats=repeats, device=device,
                                memory=device.startswith("cuda")):
                rows.append({"model": "toy-unet (random)", **r})
            overheads = bench_overheads(toy_adapter, size=32, repeats=repeats, device=device)
    finally:
        torch.set_num_threads(previous)
    two_pass = [r for r in rows if r["variant"] == "two_pass" and r.get("flop_ratio")]
    summary = {
        "device": device_info(), "rows": rows, "overheads": overheads,
        "prediction": {"two_pass_flop_ratio_sdxl": PREDICTED_TWO_PASS, "residual_mask_flop_ratio": 1.0,
                       "r_sdxl": R_SDXL},
        "measured_two_pass_flop_ratio": {r["model"] + f"@{r['grid']}": r["flop_ratio"] for r in two_pass},
    }
    if full_size:  # two_pass runs the UNet at batch 4 (CFG × two passes), the baseline at batch 2
        by = {r["variant"]: r for r in rows}
        summary["peak_mem_batch4_over_batch2"] = by["two_pass"]["peak_mem_ratio"]
    out = Path(output_dir)
    write_json(out / "bench.json", summary)
    text = (f"# feat-tryon bench\n\ndevice: {summary['device'].get('device')}\n\n{_format(rows)}\n\n"
            f"predicted two_pass/baseline FLOPs on SDXL: {PREDICTED_TWO_PASS:.2f} (r = {R_SDXL}); measured: "
            f"{summary['measured_two_pass_flop_ratio']}\n")
    if overheads:
        text += "\nonce-per-image work (ms): " + ", ".join(f"{o['overhead']} {o['median_ms']:.2f}"
                                                            for o in overheads) + "\n"
    atomic_write(out / "bench.md", text)
    print(text)
    return {"files": ["bench.json", "bench.md"], "rows": rows, "prediction": summary["prediction"],
            "measured_two_pass_flop_ratio": summary["measured_two_pass_flop_ratio"]}
