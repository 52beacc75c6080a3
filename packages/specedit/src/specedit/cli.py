"""``specedit`` command line: ``edit``, ``compare``, ``flops``, ``calibrate``, ``demo``, ``bench`` (spec §5).

Every written file goes through ``flowcore.io`` (atomic, PNG + sidecar JSON). Exit codes: 0 ok, 1 error, 2 toy
weights missing (the message names the training command).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from specedit import __version__
from specedit.config import SpecEditConfig

__all__ = ["build_parser", "main"]

EXIT_MISSING_WEIGHTS = 2  # = flowcore.cli.EXIT_MISSING_WEIGHTS (run_cli)


def _common(parser: argparse.ArgumentParser, default_model: str | None = "toy-kontext",
            default_output: str | None = "outputs/specedit") -> None:
    from flowcore.cli import add_common_args

    add_common_args(parser, default_model=default_model, default_output_dir=default_output)


def _config_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SpecEdit settings")
    g.add_argument("--tau", type=float, default=0.75,
                   help="discrepancy threshold on the raw [0, 4] scale; cells scoring above it stay fine "
                        "(default 0.75; < 0 keeps every cell fine)")
    g.add_argument("--ratio", type=float, default=None,
                   help="keep this fraction (0, 1] of cells fine instead of thresholding at --tau")
    g.add_argument("--stride", type=int, default=3,
                   help="uniform-grid stride k: every k-th cell per axis stays fine (0 = off; default 3)")
    g.add_argument("--draft-steps", type=int, default=8, help="Euler steps of the low-resolution draft (default 8)")
    g.add_argument("--draft-factor", type=int, default=4, choices=(2, 4, 6, 8),
                   help="draft pooling per side: 4 = 16× fewer tokens (default 4)")
    g.add_argument("--reference-policy", default="full", choices=("full", "coarse", "mirror_mask"),
                   help="reference tokens per stage: full everywhere, pooled in coarse-only steps, or pooled "
                        "outside the target mask (default full)")
    g.add_argument("--proportional", action=argparse.BooleanOptionalAction, default=False,
                   help="add log 4 to the attention logits of coarse keys in mixed-resolution calls (default off: "
                        "on toy-kontext it cost 8 dB of background PSNR, see the README)")
    g.add_argument("--feature-extractor", default="auto", choices=("auto", "vae_decoder", "color_pyramid", "latent"),
                   help="verification features (auto: VAE decoder taps, colour pyramid for pixel-space toys)")
    g.add_argument("--source-view", default="matched", choices=("matched", "full"),
                   help="compare the draft with the equally blurred source (matched) or the source itself")
    g.add_argument("--dilate", type=int, default=0, help="3×3 dilation iterations of the edit cells (0-3)")
    g.add_argument("--coarse-positions", default="auto", choices=("auto", "fine_frame", "native"),
                   help="positions of coarse-only steps: native coarse grid with a pooled reference (auto), always "
                        "the fine frame, or always native")


def _config_from(args: argparse.Namespace, **extra: Any) -> SpecEditConfig:
    return SpecEditConfig(tau=args.tau, ratio=args.ratio, uniform_stride=args.stride, draft_steps=args.draft_steps,
                          draft_factor=args.draft_factor, reference_policy=args.reference_policy,
                          proportional_attention=args.proportional, feature_extractor=args.feature_extractor,
                          source_view=args.source_view, dilate=args.dilate,
                          coarse_positions=args.coarse_positions, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specedit",
        description="SpecEdit: draft-and-verify dynamic-resolution acceleration of in-context image editing "
                    "(FLUX.1 Kontext, Qwen-Image-Edit, toy-kontext).",
    )
    parser.add_argument("--version", action="version", version=f"specedit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    edit = sub.add_parser("edit", help="edit one image with SpecEdit (optionally next to the baseline)",
                          description="Edit one image; writes NAME.png and NAME.json (and maps/baseline if asked).")
    _common(edit)
    edit.add_argument("--image", required=True, help="the source image (path)")
    edit.add_argument("--prompt", required=True, help="the edit instruction")
    edit.add_argument("--steps", type=int, default=18, help="main-trajectory steps (NFE; default 18)")
    edit.add_argument("--guidance", type=float, default=None,
                      help="embedded guidance (Kontext/toy; default 2.5) or true-CFG scale (Qwen; default 4.0)")
    edit.add_argument("--baseline", action="store_true",
                      help="also run the stock pipeline at --baseline-steps and record measured ratios")
    edit.add_argument("--baseline-steps", type=int, default=50, help="steps of the baseline run (default 50)")
    edit.add_argument("--save-maps", action="store_true",
                      help="write NAME.mask.png (edit cells red, uniform blue), NAME.draft.png and NAME.S.png")
    edit.add_argument("--name", default="edit", help="output file stem (default: edit)")
    edit.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    _config_args(edit)

    compare = sub.add_parser("compare", help="SpecEdit vs plain step reduction vs the 50-step baseline on one "
                                             "image", description="Runs the baseline, SpecEdit and plain "
                                                                  "reduction at each NFE; writes images and a table.")
    _common(compare)
    compare.add_argument("--image", required=True, help="the source image (path)")
    compare.add_argument("--prompt", required=True, help="the edit instruction")
    compare.add_argument("--nfe", type=int, nargs="+", default=[30, 18, 11, 9], help="NFE values (default 30 18 11 9)")
    compare.add_argument("--name", default="compare", help="output file stem (default: compare)")
    compare.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    _config_args(compare)

    flops = sub.add_parser("flops", help="analytic FLOP ratios of full-size models next to the paper's",
                           description="Predicted FLOP speed-ups (vs the 50-step baseline) of SpecEdit on full-size "
                                       "FLUX.1-Kontext-dev / Qwen-Image-Edit for the full and mirror_mask reference "
                                       "policies, next to the paper's ratios (spec §8.3).")
    flops.add_argument("--arch", default="flux-kontext-dev", choices=("flux-kontext-dev", "qwen-image-edit", "both"),
                       help="architecture (default flux-kontext-dev)")
    flops.add_argument("--height", type=int, default=1024, help="target height in px (default 1024)")
    flops.add_argument("--width", type=int, default=1024, help="target width in px (default 1024)")
    flops.add_argument("--steps", type=int, nargs="+", default=[30, 18, 11, 9], help="NFE values")
    flops.add_argument("--rho", type=float, nargs="+", default=[0.118, 0.25, 0.5],
                       help="fractions of target tokens kept fine (default 0.118 0.25 0.5)")
    flops.add_argument("--text-tokens", type=int, default=None,
                       help="text tokens per call (default 512 for Kontext, 1400 for Qwen)")
    flops.add_argument("--reference-policy", default=None, choices=("full", "coarse", "mirror_mask"),
                       help="only this policy (default: full and mirror_mask)")
    flops.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                       help="machine-readable output (stdout without PATH)")

    calib = sub.add_parser("calibrate", help="S quantiles inside/outside the exact edit masks (toy dev split)",
                           description="Runs draft + verification on toy dev pairs and prints the discrepancy "
                                       "distribution inside and outside the exactly changed cells, per τ recall.")
    _common(calib)
    calib.add_argument("--n", type=int, default=64, help="number of dev pairs (default 64)")
    calib.add_argument("--split", default="val", help="toy split (default val)")
    calib.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    _config_args(calib)

    demo = sub.add_parser("demo", help="the toy-world demonstration (spec §6)",
                          description="Full-50 vs SpecEdit at 30/18/11/9 NFE vs plain reduction on toy-kontext edit "
                                      "pairs, judged; writes demo.json, demo.md and grid.png. --quick is the CI smoke run.")
    _common(demo)
    demo.add_argument("--pairs", type=int, default=512, help="edit pairs (default 512)")
    demo.add_argument("--split", default="test", help="toy split: val (dev) or test (default test)")
    demo.add_argument("--timing-pairs", type=int, default=64, help="pairs timed with complete runs (default 64)")
    demo.add_argument("--quick", action="store_true", help="16 pairs, baseline and SpecEdit@18 only (mechanics)")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    demo.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    _config_args(demo)

    bench = sub.add_parser("bench", help="per-call timing benchmark (B2 on CPU, §8.2 full-size on a GPU)",
                           description="Times every SpecEdit call type next to its analytic FLOP ratio.")
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (B2) or cuda (§8.2)")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats (median; default 5)")
    bench.add_argument("--only", default=None, choices=("flux-kontext-dev", "qwen-image-edit"),
                       help="GPU: one architecture only")
    bench.add_argument("--output-dir", type=Path, default=Path("outputs/specedit-bench"), metavar="DIR",
                       help="folder for bench.json (default outputs/specedit-bench)")
    bench.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                       help="machine-readable output (stdout without PATH)")
    return parser


# ------------------------------------------------------------------------------------------------ helpers
class MissingWeights(Exception):
    pass


def _toy_pipe(args: argparse.Namespace, config: SpecEditConfig):
    from specedit import toy
    from specedit.pipelines import SpecEditToyKontextPipeline

    try:
        bundle = toy.build_bundle("toy-kontext") if getattr(args, "random_init", False) else toy.load_bundle(
            "toy-kontext")
    except toy.ToyWeightsMissing as err:
        raise MissingWeights(str(err)) from err
    factor, reason = toy.draft_factor_for(bundle)
    if factor != config.draft_factor and not getattr(args, "random_init", False):
        print(f"note: {reason}", file=sys.stderr)
        config = config.replace(draft_factor=factor)
    return SpecEditToyKontextPipeline.from_toy(bundle=bundle, specedit_config=config), bundle


def _real_pipe(model: str, config: SpecEditConfig, dtype: torch.dtype, device: torch.device):
    from diffusers import DiffusionPipeline

    from specedit.pipelines import SpecEditFluxKontextPipeline, SpecEditQwenImageEditPipeline

    info = DiffusionPipeline.load_config(model)
    name = info.get("_class_name", "")
    cls = {"FluxKontextPipeline": SpecEditFluxKontextPipeline,
           "QwenImageEditPipeline": SpecEditQwenImageEditPipeline}.get(name)
    if cls is None:
        raise ValueError(f"{model} is a {name or 'unknown'} pipeline; specedit supports FluxKontextPipeline and "
                         "QwenImageEditPipeline")
    pipe = cls.from_pretrained(model, torch_dtype=dtype, specedit_config=config)
    return pipe.to(device)


def _load_pipe(args: argparse.Namespace, config: SpecEditConfig):
    from flowcore.cli import resolve_device, resolve_dtype, resolve_model

    ref = resolve_model(args.model)
    if ref.is_toy:
        if ref.name != "toy-kontext":
            raise ValueError(f"specedit edits with toy-kontext; {ref.name} is not an editing model")
        pipe, _ = _toy_pipe(args, config)
        return pipe, True
    device = resolve_device(args.device)
    return _real_pipe(str(ref.path or ref.name), config, resolve_dtype(args.dtype), device), False


def _call(pipe: Any, toy: bool, image: Any, prompt: str, steps: int, seed: int, guidance: float | None,
          config: SpecEditConfig | None = None):
    generator = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = dict(num_inference_steps=steps, generator=generator, output_type="pt")
    if config is not None:
        kw["specedit_config"] = config
    if toy:
        from flowcore.images import to_tensor

        img = to_tensor(image)
        if tuple(img.shape[-2:]) != (32, 32):
            img = torch.nn.functional.interpolate(img, size=(32, 32), mode="area")
        return pipe(image=img, prompt=prompt, guidance_scale=2.5 if guidance is None else guidance, **kw)
    from PIL import Image

    pil = Image.open(image).convert("RGB")
    if type(pipe).__name__ == "SpecEditQwenImageEditPipeline":
        return pipe(image=pil, prompt=prompt, negative_prompt=" ", true_cfg_scale=4.0 if guidance is None else guidance,
                    **kw)
    return pipe(image=pil, prompt=prompt, guidance_scale=2.5 if guidance is None else guidance, **kw)


def _mask_image(stats: Any) -> torch.Tensor:
    """Fine cells as an RGB picture: edit cells red, uniform cells blue, ragged/other grey."""
    edit, unif = stats.edit_cells, stats.uniform_cells
    h, w = edit.shape
    img = torch.zeros(1, 3, h, w)
    img[0, 0][edit] = 1.0
    img[0, 2][unif & ~edit] = 1.0
    return torch.nn.functional.interpolate(img, scale_factor=8, mode="nearest")


def _stats_dict(stats: Any) -> dict:
    return stats.to_dict() if stats is not None else {}


# ----------------------------------------------------------------------------------------------- commands
def cmd_edit(args: argparse.Namespace) -> dict:
    from flowcore.io import save_result

    if args.output_dir is None:
        raise ValueError("--output-dir is required")
    config = _config_from(args, keep_maps=args.save_maps)
    pipe, toy = _load_pipe(args, config)
    start = time.perf_counter()
    out = _call(pipe, toy, args.image, args.prompt, args.steps, args.seed, args.guidance)
    wall = time.perf_counter() - start
    stats = out.specedit[0] if out.specedit else None
    summary: dict[str, Any] = {"command": "edit", "package": "specedit", "model": args.model, "seed": args.seed,
                               "prompt": args.prompt, "image": str(args.image), "steps": args.steps,
                               "config": config.to_dict(), "wall_s": round(wall, 4), "specedit": _stats_dict(stats)}
    extra: dict[str, Any] = {}
    if args.baseline:
        base_cfg = SpecEditConfig(mask_override="all", n_coarse=0, n_full=args.baseline_steps)
        start = time.perf_counter()
        base = _call(pipe, toy, args.image, args.prompt, args.baseline_steps, args.seed, args.guidance, base_cfg)
        base_wall = time.perf_counter() - start
        extra["baseline"] = base.images
        base_stats = base.specedit[0] if base.specedit else None
        summary["baseline"] = {"steps": args.baseline_steps, "wall_s": round(base_wall, 4),
                               "wall_ratio": round(base_wall / wall, 3) if wall else None}
        if stats is not None and base_stats is not None and stats.flops_run and base_stats.flops_run:
            summary["baseline"]["flop_ratio"] = round(base_stats.flops_run / (stats.flops_run + (stats.flops_draft
                                                                                                   or 0)), 3)
    if args.save_maps and stats is not None:
        if stats.edit_cells is not None:
            extra["mask"] = _mask_image(stats)
        if stats.score_map is not None:
            extra["S"] = (stats.score_map[:1, None] / 4.0).clamp(0, 1)
        if stats.draft is not None and toy:
            extra["draft"] = ((stats.draft[:1, :3] + 1) / 2).clamp(0, 1)
    path = save_result(Path(args.output_dir) / args.name, out.images, {**summary, "world": "toy" if toy else None},
                       extra_images=extra)
    summary["json"] = str(path)
    return summary


def cmd_compare(args: argparse.Namespace) -> dict:
    from flowcore.io import save_result

    if args.output_dir is None:
        raise ValueError("--output-dir is required")
    config = _config_from(args)
    pipe, toy = _load_pipe(args, config)
    plain_cfg = lambda n: SpecEditConfig(mask_override="all", n_coarse=0, n_full=n)  # noqa: E731
    rows, images = [], {}
    start = time.perf_counter()
    base = _call(pipe, toy, args.image, args.prompt, 50, args.seed, None, plain_cfg(50))
    base_wall = time.perf_counter() - start
    rows.append({"method": "full-50", "steps": 50, "wall_s": round(base_wall, 4), "wall_ratio": 1.0})
    images["full-50"] = base.images
    base_flops = base.specedit[0].flops_run if base.specedit and base.specedit[0] else None
    for nfe in args.nfe:
        for method, cfg in (("specedit", config), ("plain", plain_cfg(nfe))):
            start = time.perf_counter()
            out = _call(pipe, toy, args.image, args.prompt, nfe, args.seed, None, cfg)
            wall = time.perf_counter() - start
            st = out.specedit[0] if out.specedit else None
            flops = (st.flops_run or 0) + (st.flops_draft or 0) if st else None
            rows.append({"method": f"{method}-{nfe}", "steps": nfe, "wall_s": round(wall, 4),
                         "wall_ratio": round(base_wall / wall, 3),
                         "flop_ratio": round(base_flops / flops, 3) if base_flops and flops else None,
                         "rho": round(st.rho, 4) if (st and method == "specedit") else None})
            images[f"{method}-{nfe}"] = out.images
    summary = {"command": "compare", "package": "specedit", "model": args.model, "seed": args.seed,
               "prompt": args.prompt, "config": config.to_dict(), "rows": rows}
    first = images.pop("full-50")
    path = save_result(Path(args.output_dir) / args.name, first, {**summary, "world": "toy" if toy else None},
                       extra_images=images)
    summary["json"] = str(path)
    return summary


def cmd_flops(args: argparse.Namespace) -> dict:
    from specedit.flops import ARCHS, FLUX_KONTEXT_DEV, QWEN_IMAGE_EDIT, paper_table, run_flops

    names = ["flux-kontext-dev", "qwen-image-edit"] if args.arch == "both" else [args.arch]
    out: dict[str, Any] = {"command": "flops", "baseline_steps": 50, "draft_steps": 8,
                           "note": ("ratios = 50 stock steps / (8 draft + n_c coarse + n_m mixed + n_f full steps), "
                                    "matmul FLOPs (2 per MAC); reference 1024² unless pooled by the policy")}
    for name in names:
        arch, default_txt, branches = ARCHS[name]
        n_txt = args.text_tokens or default_txt
        rows = paper_table(name, height=args.height, width=args.width, n_txt=n_txt, rhos=tuple(args.rho),
                           steps=tuple(args.steps))
        if args.reference_policy:
            rows = [{k: v for k, v in r.items() if not k.startswith(("full@", "mirror_mask@", "coarse@"))
                     or k.startswith(args.reference_policy + "@")} for r in rows]
            if args.reference_policy == "coarse":
                for r in rows:
                    for rho in args.rho:
                        r[f"coarse@{rho:g}"] = round(run_flops(arch, SpecEditConfig(reference_policy="coarse"),
                                                               args.height, args.width, r["nfe"], n_txt, branches,
                                                               rho).ratio, 2)
        per_step = run_flops(arch, SpecEditConfig(), args.height, args.width, 18, n_txt, branches, 0.25)
        pooled = run_flops(arch, SpecEditConfig(reference_policy="mirror_mask"), args.height, args.width, 18, n_txt,
                           branches, 0.25)
        full_tf = branches * per_step.per_call["full"] / 1e12
        paper_step = {"flux-kontext-dev": 8299.54 / 50, "qwen-image-edit": 28219.71 / 50}[name]
        rel = per_step.relative_step_cost
        bound18 = 50 / (18 * rel["coarse"] + 8 * rel["draft"])  # every main step at least coarse-only + draft
        bound30 = 50 / (30 * rel["coarse"] + 8 * rel["draft"])
        out[name] = {
            "text_tokens": n_txt, "calls_per_step": branches,
            "full_step_tflops": round(full_tf, 1), "paper_full_step_tflops": round(paper_step, 1),
            "draft_step_tflops": round(branches * per_step.per_call["draft"] / 1e12, 1),
            "relative_cost": {"coarse_full_ref": round(per_step.relative_step_cost["coarse"], 3),
                              "coarse_pooled_ref": round(pooled.relative_step_cost["coarse"], 3),
                              "mixed_0.25_full": round(per_step.relative_step_cost["mixed"], 3),
                              "mixed_0.25_mirror": round(pooled.relative_step_cost["mixed"], 3),
                              "draft": round(per_step.relative_step_cost["draft"], 3)},
            "bound_full_reference": {"18": round(bound18, 2), "30": round(bound30, 2)},
            "rows": rows,
        }
        if name == "flux-kontext-dev":
            out[name]["explanation"] = (
                "Our full step (1024² target + 1024² reference + 512 text) matches the paper's 166 TF. With a "
                "full-resolution reference no main step costs less than the coarse-only step, so 18/30 NFE cannot "
                f"exceed {bound18:.2f}×/{bound30:.2f}×: the paper's 5.38×/3.31× imply pooled reference tokens "
                "(compare the mirror_mask columns); its 9-NFE 7.37× matches the default (full) policy.")
        else:
            best = max(v for r in rows for k, v in r.items() if k.startswith("mirror_mask@") and r["nfe"] == 9)
            out[name]["explanation"] = (
                f"Our Qwen step is {full_tf:.0f} TF (two calls, 1,400 text tokens) vs the paper's {paper_step:.0f}: "
                "its convention or resolution differs, so only ratios compare. At 30/18/11 NFE the paper's ratios "
                "lie between our full and mirror_mask predictions (pooled reference tokens again); its 10.94× at 9 "
                f"NFE exceeds even our most favourable prediction ({best:.2f}×), which needs a cheaper draft or "
                "text stream than our accounting (the draft reuses the ≈1,400 text tokens with two CFG calls).")
    if args.arch != "both":
        out["model"] = FLUX_KONTEXT_DEV if args.arch == "flux-kontext-dev" else QWEN_IMAGE_EDIT
    return out


def cmd_calibrate(args: argparse.Namespace) -> dict:
    import numpy as np

    from flowcore.images import mask_to_grid
    from specedit import toy

    config = _config_from(args, keep_maps=True, mask_override=None)
    pipe, _ = _toy_pipe(args, config)
    inside, outside, rows = [], [], []
    from flowcore.cli import progress

    for index in progress(range(args.n), desc="calibrate"):
        pair = toy.sample_edit(args.seed, index, args.split)
        out = pipe(image=pair.source_image[None], prompt=pair.instruction, num_inference_steps=18,
                   generator=torch.Generator().manual_seed(args.seed * 100_003 + index), output_type="pt")
        st = out.specedit[0]
        s_map = st.score_map[0]
        changed = mask_to_grid(pair.pixel_mask[None].float(), tuple(s_map.shape), mode="any")[0, 0] > 0
        inside.append(s_map[changed].numpy())
        outside.append(s_map[~changed].numpy())
        cells = mask_to_grid(pair.pixel_mask[None].float(), (s_map.shape[0] // 4, s_map.shape[1] // 4),
                             mode="any")[0, 0] > 0
        if cells.any():
            rows.append({"kind": pair.kind, "recall": float((st.edit_cells & cells).sum() / cells.sum()),
                         "rho": st.rho})
    q = [0.1, 0.5, 0.9, 0.99]
    ins = np.concatenate(inside) if inside else np.zeros(1)
    outs = np.concatenate(outside) if outside else np.zeros(1)
    return {"command": "calibrate", "pairs": args.n, "split": args.split, "tau": args.tau,
            "S_inside_changed": {f"q{int(100 * v)}": float(np.quantile(ins, v)) for v in q},
            "S_outside_changed": {f"q{int(100 * v)}": float(np.quantile(outs, v)) for v in q},
            "recall_edit_mean": float(np.mean([r["recall"] for r in rows])) if rows else None,
            "rho_mean": float(np.mean([r["rho"] for r in rows])) if rows else None}


def cmd_demo(args: argparse.Namespace) -> dict:
    from flowcore.cli import progress
    from specedit import toy
    from specedit.demo import DemoSettings, run_demo, write_report

    if args.model != "toy-kontext":
        raise ValueError("the demonstration runs on toy-kontext only")
    try:
        bundle = toy.build_bundle("toy-kontext") if args.random_init else toy.load_bundle("toy-kontext")
    except toy.ToyWeightsMissing as err:
        raise MissingWeights(str(err)) from err
    settings = DemoSettings(pairs=args.pairs, split=args.split, seed=args.seed, quick=args.quick,
                            timing_pairs=args.timing_pairs, threads=args.threads, config=_config_from(args))
    report = run_demo(settings, bundle=bundle, progress=progress, log=lambda m: print(m, file=sys.stderr))
    out_dir = Path(args.output_dir or "outputs/specedit-demo")
    paths = write_report(report, out_dir)
    if args.random_init:
        report["warning"] = "random-init weights: plumbing only, the numbers mean nothing"
    report["files"] = [str(p) for p in paths]
    return report


def cmd_bench(args: argparse.Namespace) -> dict:
    from flowcore.io import write_json
    from specedit.bench import gpu_bench, mechanism_bench

    if args.device == "cuda":
        report = gpu_bench(repeats=args.repeats, only=args.only)
    else:
        report = mechanism_bench(repeats=args.repeats)
    path = write_json(Path(args.output_dir) / "bench.json", report)
    report["json"] = str(path)
    return report


COMMANDS = {"edit": cmd_edit, "compare": cmd_compare, "flops": cmd_flops, "calibrate": cmd_calibrate,
            "demo": cmd_demo, "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    from flowcore.cli import USER_ERRORS, run_cli

    return run_cli("specedit", build_parser(), COMMANDS, argv, extra_missing=(MissingWeights,),
                   user_errors=(*USER_ERRORS, NotImplementedError, RuntimeError),
                   missing_label="the trained toy weights are missing")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
