"""``feat-tryon`` command line: run (aliases tryon, edit) | masks | ofr | probe-blocks (alias probe) | demo | bench.

Every file is written through ``flowcore.io`` (atomically) with a sidecar JSON. Exit codes: 0 success, 1 bad input
(the message says what to fix), 2 missing toy weights.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from feat_tryon.config import PRESETS, FEATConfig
from flowcore.cli import (
    USER_ERRORS,
    add_common_args,
    progress,
    resolve_device,
    resolve_dtype,
    resolve_model,
    run_cli,
)

__all__ = ["build_parser", "main"]


def _out(name: str) -> str:
    return f"outputs/feat-tryon/{name}"


def _size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 1024x768), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {value!r}")
    return h, w


def _ip_adapter(value: str) -> tuple[str, str, str]:
    parts = value.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--ip-adapter takes REPO:SUBFOLDER:FILE (e.g. h94/IP-Adapter:sdxl_models:"
                                         f"ip-adapter_sdxl.bin), got {value!r}")
    return parts[0], parts[1], parts[2]


def _random_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--random-init", action="store_true",
                   help="toy models only: seeded random weights instead of the trained toy weights (plumbing checks; "
                        "the pictures are noise)")
    p.add_argument("--toy-preset", choices=["full", "ci"], default="full",
                   help="architecture of --random-init toys: full (the shipped size) or ci (tiny test configs)")


# --- parsers ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feat-tryon",
        description="FEAT: training-free garment editing and try-on from any design image (SDXL / SD1.5 / toy-unet "
                    "with IP-Adapter + ControlNet; OFR + RANF on SD3 / FLUX / toy-sd3).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub)
    _masks_parser(sub)
    _ofr_parser(sub)
    _probe_parser(sub)
    _demo_parser(sub)
    _bench_parser(sub)
    return parser


def _run_parser(sub: Any) -> None:
    p = sub.add_parser("run", aliases=["tryon", "edit"], help="dress / edit one person image",
                       description="Replace (or add) the item under --garment-mask with the design, the sketch's "
                                   "silhouette and the prompt. Without --sketch/--sketch-mask the item is edited in "
                                   "place (same silhouette, ControlNet off).")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("run"))
    p.add_argument("--person", required=True, help="person image (any format Pillow reads)")
    p.add_argument("--design", help="design image: apparel, artwork, a photo or a fabric (any mode and size)")
    p.add_argument("--garment-mask", help="mask of the worn item to replace (white = item); omit to add an item")
    p.add_argument("--mask-provider", help="mask provider name when no --garment-mask is given (built-in: toy)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sketch", help="sketch of the new item (its closed outline; filled automatically)")
    group.add_argument("--sketch-mask", help="filled region of the new item (all black = removal only)")
    p.add_argument("--prompt", default="", help="text prompt (default: empty)")
    p.add_argument("--negative-prompt", default="", help="CFG negative prompt (default: empty)")
    p.add_argument("--controlnet", help="ControlNet hub id or path (default: the family's depth ControlNet)")
    p.add_argument("--ip-adapter", type=_ip_adapter, help="IP-Adapter as REPO:SUBFOLDER:FILE (default: h94/IP-Adapter)")
    p.add_argument("--preset", default="feat", choices=sorted(PRESETS), help="spec §5 preset (default: feat)")
    p.add_argument("--steps", type=int, help="sampling steps (default 50; flow models 28)")
    p.add_argument("--cfg", type=float, help="CFG scale (default 7.5; flow models 3.5, toy-sd3 5)")
    p.add_argument("--sketch-scale", type=float, help="ControlNet scale λ_sk (default 0.7)")
    p.add_argument("--image-scale", type=float, help="IP-Adapter scale (default 0.5)")
    p.add_argument("--style-scale", type=float, help="style-block scale λ_s (default: image scale)")
    p.add_argument("--content-scale", type=float, help="content-block scale λ_c (default: image scale)")
    p.add_argument("--text-scale", type=float, help="text cross-attention scale τ (default 0.5)")
    p.add_argument("--style-blocks", nargs="+", help="attention groups or sites for the style embedding")
    p.add_argument("--content-blocks", nargs="+", help="attention groups or sites for the content embedding")
    p.add_argument("--routing", help="routing JSON (e.g. from probe-blocks)")
    p.add_argument("--kappa", type=float, help="CSPE proxy weight κ (default 1)")
    p.add_argument("--sigma-frac", type=float, help="CSPE blur σ as a fraction of the encoder side (default 0.05)")
    p.add_argument("--alpha", type=float, help="OFR strength α (default 1)")
    p.add_argument("--ofr-mode", choices=["global", "per_pixel"], help="OFR projection (default global)")
    p.add_argument("--ofr-center", choices=["white", "origin"], help="OFR centre (default white)")
    p.add_argument("--sketch-gating", choices=["two_pass", "residual_mask", "none"],
                   help="how the sketch is kept out of the removal region (default two_pass)")
    p.add_argument("--init-strength", type=float, help="fraction of the schedule run, (0, 1] (default 1)")
    p.add_argument("--dilate", type=int, help="operating-area dilation in px (default 1%% of the short side)")
    p.add_argument("--ip-mask", choices=["none", "sketch", "operating"], help="mask on the IP branch (default none)")
    p.add_argument("--paste-back", choices=["off", "hard", "feather"], help="pixel paste-back outside M (default off)")
    p.add_argument("--control-image", help="your own ControlNet image (sets the control image mode to user)")
    p.add_argument("--size", type=_size, help="resize the inputs to HxW first (default: the person's size)")
    p.add_argument("--name", default="result", help="output file stem (default: result)")
    p.add_argument("--save-intermediates", action="store_true",
                   help="also write the region map, the decoded OFR latent, the CSPE proxy and the control image")
    _random_init(p)


def _masks_parser(sub: Any) -> None:
    p = sub.add_parser("masks", help="region map and statistics of a garment mask and a sketch",
                       description="Fill the sketch, dilate the operating area and pool to the latent grid; write "
                                   "the region map (new green, removal red, keep grey) and the areas.")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("masks"))
    p.add_argument("--garment-mask", required=True, help="mask of the worn item")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--sketch", help="sketch of the new item")
    group.add_argument("--sketch-mask", help="filled region of the new item")
    p.add_argument("--factor", type=int, help="latent factor f (default: 2 for toy-unet, 1 for toy-sd3, else 8)")
    p.add_argument("--dilate", type=int, help="operating-area dilation in px")
    p.add_argument("--name", default="masks", help="output file stem (default: masks)")


def _ofr_parser(sub: Any) -> None:
    p = sub.add_parser("ofr", help="orthogonal fashion removal only: the decoded z̃, β and ρ_in",
                       description="Encode the person and the garment-on-white image, project the garment direction "
                                   "out and decode the result.")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("ofr"))
    p.add_argument("--person", required=True, help="person image")
    p.add_argument("--garment-mask", required=True, help="mask of the worn item")
    p.add_argument("--alpha", type=float, default=1.0, help="OFR strength α (default 1)")
    p.add_argument("--ofr-mode", choices=["global", "per_pixel"], default="global", help="projection (default global)")
    p.add_argument("--ofr-center", choices=["white", "origin"], default="white", help="centre (default white)")
    p.add_argument("--name", default="ofr", help="output file stem (default: ofr)")
    _random_init(p)


def _probe_parser(sub: Any) -> None:
    p = sub.add_parser("probe-blocks", aliases=["probe"], help="which attention blocks carry style and content",
                       description="Route the design to one candidate block at a time and score style and content "
                                   "(spec §2.6); writes a table and routing.json.")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("probe"))
    p.add_argument("--samples", default="toy",
                   help="'toy' or a folder of <stem>.person.png, <stem>.garment.png, <stem>.sketch_mask.png and "
                        "<stem>.design.png (default: toy)")
    p.add_argument("--n", type=int, default=16, help="number of probe pairs (default 16)")
    p.add_argument("--granularity", choices=["group", "site"], default="group", help="candidates (default group)")
    p.add_argument("--steps", type=int, default=30, help="sampling steps (default 30)")
    p.add_argument("--scale", type=float, default=1.0, help="λ of the probed block (default 1)")
    _random_init(p)


def _demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the toy-world demonstration (spec §6) with its acceptance checks",
                       description="Runs FEAT and its ablations on the toy try-on scenes with toy-unet; writes "
                                   "results.json, table.md and picture grids. Needs the trained toy weights.")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("demo"))
    p.add_argument("--n", type=int, default=128, help="number of scenes (default 128)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--quick", action="store_true", help="16 scenes, 20 steps, feat and baseline only (CI, ≤ 2 min)")
    p.add_argument("--flow", action="store_true", help="also run the §6.4 flow port on toy-sd3")
    p.add_argument("--batch", type=int, default=8, help="scenes per batch (default 8)")
    p.add_argument("--no-probe", action="store_true", help="skip the block probe (§6.3 item 7)")
    _random_init(p)


def _bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="ratios against the baseline, measured side by side (spec §8)",
                       description="Wall time, UNet samples, FLOPs and peak memory of FEAT's variants against the "
                                   "baseline on tiny SDXL-like models and toy-unet (--full-size: SDXL on a GPU).")
    add_common_args(p, default_model="toy-unet", default_output_dir=_out("bench"))
    p.add_argument("--sizes", default="32,64", help="latent sides of the tiny UNet, comma separated (default 32,64)")
    p.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--full-size", action="store_true", help="full-size SDXL UNet + ControlNet (GPU; random init)")


# --- helpers ----------------------------------------------------------------------------------------------------------
def _load_pipeline(args: argparse.Namespace) -> Any:
    from feat_tryon.pipelines import FEATFlowPipeline, FEATPipeline

    ref = resolve_model(args.model)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype)
    random_init = bool(getattr(args, "random_init", False))
    preset = getattr(args, "toy_preset", "full")
    if ref.is_toy:
        if ref.name == "toy-unet":
            pipe = FEATPipeline.from_toy("toy-unet", random_init=random_init, device=device, preset=preset)
        elif ref.name == "toy-sd3":
            pipe = FEATFlowPipeline.from_toy("toy-sd3", random_init=random_init, device=device, preset=preset)
        else:
            raise ValueError(f"feat-tryon runs toy-unet (full FEAT) or toy-sd3 (OFR + RANF), not {ref.name}")
        return pipe.to(device, dtype) if dtype != torch.float32 else pipe
    if random_init:
        raise ValueError("--random-init applies to toy models only")
    from flowcore.adapters.loading import _pipeline_class_name

    cls_name = _pipeline_class_name(str(ref.path or ref.name))
    if "3" in cls_name or "Flux" in cls_name:
        pipe = FEATFlowPipeline.from_pretrained(str(ref.path or ref.name), torch_dtype=dtype)
    else:
        pipe = FEATPipeline.from_pretrained(str(ref.path or ref.name), controlnet=getattr(args, "controlnet", None),
                                            ip_adapter=getattr(args, "ip_adapter", None), torch_dtype=dtype)
    return pipe.to(device)


def _read_image(path: str | None, what: str, size: tuple[int, int] | None = None) -> torch.Tensor | None:
    if path is None:
        return None
    from flowcore.images import to_tensor

    img = to_tensor(path)
    if size is not None and tuple(img.shape[-2:]) != size:
        import torch.nn.functional as F

        img = F.interpolate(img, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return img


def _read_mask(path: str | None, size: tuple[int, int]) -> torch.Tensor | None:
    if path is None:
        return None
    from flowcore.images import load_mask

    return load_mask(path, size, threshold=0.5)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    ddi = {"style_scale": args.style_scale, "content_scale": args.content_scale, "text_scale": args.text_scale,
           "style_blocks": args.style_blocks, "content_blocks": args.content_blocks, "routing_file": args.routing,
           "kappa": args.kappa, "sigma_frac": args.sigma_frac, "ip_mask": args.ip_mask}
    ofr = {"alpha": args.alpha, "mode": args.ofr_mode, "center": args.ofr_center}
    ranf = {"sketch_gating": args.sketch_gating, "init_strength": args.init_strength, "dilate_px": args.dilate,
            "paste_back": args.paste_back}
    top = {"num_inference_steps": args.steps, "guidance_scale": args.cfg, "sketch_scale": args.sketch_scale,
           "image_scale": args.image_scale}
    if args.control_image:
        top["control_image_mode"] = "user"
    return {**top, "ddi": ddi, "ofr": ofr, "ranf": ranf}


# --- commands ---------------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    pipe = _load_pipeline(args)
    person = _read_image(args.person, "person", args.size)
    assert person is not None
    size = tuple(person.shape[-2:])
    garment = _read_mask(args.garment_mask, size)  # type: ignore[arg-type]
    sketch = _read_image(args.sketch, "sketch", size)  # type: ignore[arg-type]
    sketch_mask = _read_mask(args.sketch_mask, size)  # type: ignore[arg-type]
    control = _read_image(args.control_image, "control image", size)  # type: ignore[arg-type]
    design = _read_image(args.design, "design")
    base = pipe.default_config()
    config = base if args.preset == "feat" else FEATConfig.preset(
        args.preset, num_inference_steps=base.num_inference_steps, guidance_scale=base.guidance_scale)
    config = config.with_overrides(**_overrides(args))
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    kwargs: dict[str, Any] = dict(garment_mask=garment, sketch=sketch, prompt=args.prompt, sketch_mask=sketch_mask,
                                  negative_prompt=args.negative_prompt, control_image=control,
                                  mask_provider=args.mask_provider, config=config, generator=generator,
                                  output_type="pt", save_intermediates=args.save_intermediates)
    from feat_tryon.pipelines import FEATPipeline

    if isinstance(pipe, FEATPipeline):
        kwargs["design"] = design
    elif design is not None:
        print("feat-tryon: flow models take no design image (describe it in --prompt); ignoring --design",
              file=sys.stderr)
    out = pipe(person, **kwargs)
    out.info.update(model=args.model, seed=args.seed, command="run", preset=args.preset,
                    inputs={"person": args.person, "design": args.design, "garment_mask": args.garment_mask,
                            "sketch": args.sketch, "sketch_mask": args.sketch_mask})
    sidecar = out.save(Path(args.output_dir) / args.name, intermediates=args.save_intermediates)
    return {"output": str(sidecar.with_suffix(".png")), "sidecar": str(sidecar), "ofr": out.info["ofr"],
            "calls": out.info["calls"], "warnings": out.info["warnings"]}


def cmd_masks(args: argparse.Namespace) -> dict[str, Any]:
    from feat_tryon.core import _region_map
    from feat_tryon.masks import fill_sketch, region_masks
    from flowcore.images import load_mask, to_tensor
    from flowcore.io import save_result

    first = args.sketch or args.sketch_mask
    ref = to_tensor(first)
    size = tuple(ref.shape[-2:])
    garment = load_mask(args.garment_mask, size, threshold=0.5)  # type: ignore[arg-type]
    kernels = None
    if args.sketch:
        sketch_mask, kernels = fill_sketch(ref.mean(dim=1, keepdim=True), return_kernel=True)
    else:
        sketch_mask = load_mask(args.sketch_mask, size, threshold=0.5)  # type: ignore[arg-type]
    factor = args.factor or {"toy-unet": 2, "toy-sd3": 1}.get(args.model, 8)
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"image {size[1]}×{size[0]} (W×H) is not a multiple of the latent factor {factor}")
    masks = region_masks(garment, sketch_mask, (size[0] // factor, size[1] // factor), dilate_px=args.dilate)
    stats = {"areas": masks.areas(), "dilate_px": masks.dilate_px, "closing_kernel": kernels, "factor": factor,
             "removal_empty": masks.removal_empty.tolist()}
    sidecar = save_result(Path(args.output_dir) / args.name, _region_map(masks, *size),
                          {"model": args.model, "command": "masks", "package": "feat-tryon", **stats},
                          extra_images={"sketch_mask": masks.sketch, "operating": masks.operating})
    return {"sidecar": str(sidecar), **stats}


def cmd_ofr(args: argparse.Namespace) -> dict[str, Any]:
    from feat_tryon.masks import region_masks
    from feat_tryon.ofr import garment_on_white, orthogonal_removal
    from flowcore.io import save_result

    pipe = _load_pipeline(args)
    adapter = pipe.adapter()
    person = _read_image(args.person, "person")
    assert person is not None
    person = person.to(adapter.device)
    size = tuple(person.shape[-2:])
    garment = _read_mask(args.garment_mask, size).to(adapter.device)  # type: ignore[arg-type, union-attr]
    h, w = size
    f = adapter.vae_scale_factor
    masks = region_masks(garment, None, (h // f, w // f))
    with torch.no_grad():
        both = adapter.to_grid(adapter.encode_image(torch.cat([person, garment_on_white(person, garment)])), h, w)
        white = adapter.to_grid(adapter.encode_image(torch.ones_like(person[:1])), h, w)
        res = orthogonal_removal(both[:1].float(), both[1:].float(), white.float(), alpha=args.alpha,
                                 mode=args.ofr_mode, center=args.ofr_center,
                                 mask=masks.garment_latent.to(adapter.device))
        decoded = adapter.decode_image(adapter.from_grid(res.latent), height=h, width=w)
    meta = {"model": args.model, "command": "ofr", "package": "feat-tryon", "alpha": args.alpha,
            "mode": args.ofr_mode, "center": args.ofr_center, **res.to_dict()}
    sidecar = save_result(Path(args.output_dir) / args.name, decoded, meta)
    return {"sidecar": str(sidecar), **res.to_dict()}


def _folder_samples(folder: Path, n: int) -> list[Any]:
    from feat_tryon.probe import ProbeSample
    from flowcore.images import load_mask, to_tensor

    stems = sorted(p.name[: -len(".person.png")] for p in folder.glob("*.person.png"))[:n]
    if not stems:
        raise ValueError(f"{folder} holds no <stem>.person.png files (with .garment.png, .sketch_mask.png, "
                         ".design.png next to them)")
    samples = []
    for stem in stems:
        person = to_tensor(folder / f"{stem}.person.png")[0]
        size = tuple(person.shape[-2:])
        samples.append(ProbeSample(person, load_mask(folder / f"{stem}.garment.png", size)[0],
                                   load_mask(folder / f"{stem}.sketch_mask.png", size)[0],
                                   to_tensor(folder / f"{stem}.design.png")[0]))
    return samples


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    from feat_tryon.probe import probe_blocks, toy_samples
    from flowcore.io import atomic_write, write_json

    pipe = _load_pipeline(args)
    samples = toy_samples(args.n, seed=args.seed) if args.samples == "toy" else \
        _folder_samples(Path(args.samples), args.n)
    report = probe_blocks(pipe, samples, granularity=args.granularity, scale=args.scale, steps=args.steps,
                          seed=args.seed, progress=lambda it: progress(it, desc="probe"))
    out = Path(args.output_dir)
    write_json(out / "routing.json", {**report.routing.to_dict(), "note": f"feat-tryon probe-blocks on {args.model}"})
    write_json(out / "probe.json", {"model": args.model, "seed": args.seed, **report.to_dict()})
    lines = ["| candidate | ΔS | ΔC | ΔS−ΔC | role |", "|---|---|---|---|---|"]
    lines += [f"| {r['candidate']} | {r['d_style']:.4f} | {r['d_content']:.4f} | {r['d_style_minus_d_content']:.4f} "
              f"| {r['role']} |" for r in report.table()]
    atomic_write(out / "probe.md", "\n".join(lines) + "\n")
    return {"table": report.table(), "routing": report.routing.to_dict(), "agreement": report.agreement(),
            "files": ["routing.json", "probe.json", "probe.md"]}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from feat_tryon.demo import run_demo

    summary = run_demo(args.output_dir, model=args.model, n=args.n, steps=args.steps, quick=args.quick,
                       flow=args.flow, seed=args.seed, batch=args.batch, random_init=args.random_init,
                       toy_preset=args.toy_preset,
                       probe=not args.no_probe, device=resolve_device(args.device),
                       progress=lambda it: progress(it, desc="demo rows"))
    return {"acceptance": summary["acceptance"], "files": summary["files"], "seconds": summary["seconds"],
            "output_dir": str(args.output_dir), "random_init": args.random_init}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from feat_tryon.bench import run_bench

    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    return run_bench(args.output_dir, sizes=sizes, steps=args.steps, repeats=args.repeats, threads=args.threads,
                     device=str(resolve_device(args.device)), full_size=args.full_size, seed=args.seed)


COMMANDS = {"run": cmd_run, "tryon": cmd_run, "edit": cmd_run, "masks": cmd_masks, "ofr": cmd_ofr,
            "probe-blocks": cmd_probe, "probe": cmd_probe, "demo": cmd_demo, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("feat-tryon", build_parser(), COMMANDS, argv,
                   user_errors=(*USER_ERRORS, TypeError, KeyError, NotImplementedError),
                   missing_label="the trained toy weights are missing")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
