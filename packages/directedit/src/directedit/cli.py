"""``directedit`` command line: ``edit | reconstruct | compare | demo | bench`` (spec §5, architecture §2).

Every command takes the shared flags of :func:`flowcore.cli.add_common_args` (``--model --output-dir --seed
--device --dtype --json [PATH]``), writes its files through ``flowcore.io`` (atomic, with a sidecar JSON) and
ends with :func:`flowcore.cli.emit`. Errors in the input (missing files, masks that do not fit, prompts the
tokenizer cannot read) exit with status 1 and one line saying what to fix, before anything is written; missing
toy weights exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from flowcore import cli as _cli
from flowcore.cli import USER_ERRORS, add_common_args, resolve_device, resolve_dtype, resolve_model, run_cli

__all__ = ["build_parser", "main"]

TOY_CHOICES = ("toy-sd3", "toy-flux", "toy-kontext")
EXIT_USAGE, EXIT_MISSING_WEIGHTS = _cli.EXIT_USER_ERROR, _cli.EXIT_MISSING_WEIGHTS  # 1, 2 (flowcore.cli.run_cli)


# --- parser -------------------------------------------------------------------------------------------------------
def _add_edit_flags(p: argparse.ArgumentParser, *, with_targets: bool = True) -> None:
    p.add_argument("--image", required=True, help="the image to edit (PNG/JPEG; padded with white to the model's "
                   "multiple and cropped back)")
    p.add_argument("--source-prompt", required=True, help="a prompt describing the image")
    if with_targets:
        p.add_argument("--target-prompt", required=True, action="append",
                       help="the edit prompt; repeat for several targets (one batch, one shared source row)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps N (default: 30; NFE = 2N)")
    p.add_argument("--source-guidance", type=float, default=1.0,
                   help="g_src for the inversion and the source branch (FLUX: embedded; SD3: CFG) (default: 1.0)")
    p.add_argument("--target-guidance", type=float, default=2.0, help="g_tar of the target branch (default: 2.0)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--attn-ratio", type=float, default=None,
                       help="injection ratio r, K = int(r·N) (default: FLUX 0.15, SD3 0.3)")
    group.add_argument("--attn-steps", type=int, default=None, help="explicit number of injection steps K")
    p.add_argument("--no-injection", action="store_true", help="disable Value injection")
    p.add_argument("--blocks", default="default",
                   help="injection sites: default (FLUX single blocks, SD3 joint attn) | single | double | all | "
                   "comma-separated glob patterns over attn_processors keys")
    p.add_argument("--attn2", action="store_true", help="SD3.5: also inject the image-only attn2 blocks")
    p.add_argument("--rows", choices=("cond", "all"), default="cond",
                   help="SD3: inject cond rows only (default) or cond and uncond rows")
    p.add_argument("--source-branch", choices=("batched", "auto", "cached"), default="batched",
                   help="source row at every step (batched), only while injecting (auto), or never: replay the "
                   "Values recorded in the inversion (cached) (default: batched)")
    p.add_argument("--no-snap", action="store_true",
                   help="add Δ to the source state instead of feeding the stored latent (still exact to ~1e-6)")
    p.add_argument("--skip-steps", type=int, default=0, help="invert only down to y_s and edit from there")
    p.add_argument("--sigma-grid", choices=("scheduler", "flux-pipeline"), default="scheduler",
                   help="the scheduler's grid (default) or FluxPipeline's linspace(1, 1/N, N)")
    p.add_argument("--fold-unit-guidance", action="store_true",
                   help="SD3: drop the uncond row of a branch whose CFG scale is exactly 1")
    p.add_argument("--offload", action="store_true", help="enable_model_cpu_offload() (hub models on CUDA)")
    p.add_argument("--random-init", action="store_true",
                   help="toy models with random weights (plumbing checks only; the images are noise)")
    p.add_argument("--name", default=None, help="file stem of the outputs (default: the image's stem)")


def _add_mask_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mask", default=None, metavar="PATH|attention",
                   help="a mask image (white = editable; must fit the image) or 'attention' for the "
                   "attention-derived mask")
    p.add_argument("--mask-words", default=None,
                   help="comma-separated source words for --mask attention (default: the words the target changes)")
    p.add_argument("--invert-mask", action="store_true", help="use 1 − mask (for masks that mark what to keep)")
    p.add_argument("--mask-dilation", type=int, default=None,
                   help="mask dilation in pixels (default: SD3 3, FLUX 0, toy-sd3 1, toy-flux 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="directedit", description="DirectEdit: step-level exact inversion and dual-path editing for flow "
        "models (SD3/SD3.5, FLUX.1, Kontext), with the RF-Solver, FireFlow, FlowEdit and naive-Euler baselines.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("edit", help="edit an image: invert it, then denoise source and target branches",
                       description="Invert IMAGE under the source prompt, then edit it toward each target prompt. "
                       "Writes <stem>.edit.png (<stem>.edit-<i>.png for several targets), <stem>.rec.png, "
                       "<stem>.mask.png, optionally <stem>.cache.safetensors, and <stem>.json.")
    _add_edit_flags(p)
    _add_mask_flags(p)
    p.add_argument("--save-cache", action="store_true", help="also write the inversion cache (safetensors + JSON)")
    _common(p, "edit")

    p = sub.add_parser("reconstruct", help="invert and reconstruct an image; PSNR beside the VAE ceiling",
                       description="Reconstruct IMAGE through the source branch and report PSNR next to the VAE "
                       "ceiling PSNR(decode(encode(x)), x). Writes <stem>.rec.png and <stem>.json.")
    _add_edit_flags(p, with_targets=False)
    p.add_argument("--method", choices=("directedit", "naive", "rf-solver", "fireflow"), default="directedit",
                   help="which inversion/reconstruction to run (default: directedit)")
    _common(p, "reconstruct")

    p = sub.add_parser("compare", help="every method at equal NFE on one image",
                       description="Run DirectEdit and the baselines at the same number of network calls. Writes "
                       "<stem>.<method>.png per method, compare.json and compare.md.")
    _add_edit_flags(p)
    _add_mask_flags(p)
    p.add_argument("--nfe", type=int, default=60, help="network calls per method (default: 60)")
    p.add_argument("--methods", default="directedit,naive,rf-solver,fireflow,flowedit",
                   help="comma-separated methods (default: all five)")
    _common(p, "compare")

    p = sub.add_parser("demo", help="the toy-world demonstration (spec §6)",
                       description="DirectEdit and the baselines on the toy world's exact edit pairs at equal NFE. "
                       "--quick: 8 pairs per toy, frozen defaults, setting A, DirectEdit in its three source-branch "
                       "modes (snapped and unsnapped) plus naive Euler sharing one inversion (acceptance A1, A6). "
                       "Without --quick: the pre-registered protocol (dev grid, frozen settings, test split, "
                       "settings A and B, oracle, position edits). Needs the trained toy weights (exit 2 without).")
    p.add_argument("--quick", action="store_true", help="the CI subset (≤ 2 min on 2 cores)")
    p.add_argument("--pairs", type=int, default=None, help="test pairs per toy (default: 256; 8 with --quick)")
    p.add_argument("--dev-pairs", type=int, default=64, help="dev pairs per toy for the grid (default: 64)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per batch (default: 32)")
    p.add_argument("--steps", type=int, default=30,
                   help="DirectEdit steps N; every method gets the same NFE 2N (default: 30)")
    p.add_argument("--random-init", action="store_true",
                   help="random toy weights (plumbing check only; the numbers mean nothing)")
    p.add_argument("--preset", choices=("full", "ci"), default="full",
                   help="toy architecture preset for --random-init (ci: tiny, for tests)")
    p.add_argument("--no-oracle", action="store_true", help="skip the text-to-image oracle (full protocol)")
    p.add_argument("--no-position", action="store_true", help="skip the position-edit table (full protocol)")
    add_common_args(p, default_model=list(("toy-sd3", "toy-flux")), multiple_models=True,
                    default_output_dir="outputs/directedit/demo", default_seed=2024)

    p = sub.add_parser("bench", help="benchmarks B1–B4 (overhead ratio, modes, NFE table, memory)",
                       description="Ratios measured side by side in one run (flowcore.bench.compare). --suite cpu: "
                       "toy-sd3 and tiny random SD3/FLUX; --suite gpu: full-size random-init SD3.5-medium and "
                       "FLUX.1-dev on the CUDA card.")
    p.add_argument("--suite", choices=("cpu", "gpu"), default=None,
                   help="which benchmark set (default: gpu when --device resolves to CUDA, else cpu)")
    p.add_argument("--steps", type=int, default=None, help="steps N (default: cpu 30, gpu 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions, median reported (default: cpu 5, gpu 3)")
    p.add_argument("--quick", action="store_true", help="fewer cases and steps (a smoke run)")
    add_common_args(p, default_model="toy-sd3", default_output_dir="outputs/directedit/bench", default_seed=0)
    return parser


def _common(p: argparse.ArgumentParser, command: str) -> None:
    add_common_args(p, default_model="toy-sd3", default_output_dir=f"outputs/directedit/{command}",
                    default_seed=2024)
    for action in p._actions:  # the model dtype default depends on the device (spec §3)
        if action.dest == "dtype":
            action.default = None
            action.help = "model dtype: float32 | float16 | bfloat16 (default: bfloat16 on CUDA, float32 on CPU)"


# --- helpers ------------------------------------------------------------------------------------------------------
class CliError(Exception):
    """A bad input; exits 1 with the message."""


def _dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    if getattr(args, "dtype", "float32") in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return resolve_dtype(args.dtype)


def load_model(spec: str, *, device: torch.device, dtype: torch.dtype, random_init: bool = False,
               offload: bool = False) -> Any:
    """A FlowModel for a toy name (trained weights, or random with ``random_init``), hub id or local path."""
    ref = resolve_model(spec)
    if ref.is_toy:
        if ref.name not in TOY_CHOICES:
            raise CliError(f"{ref.name} is not an editing toy; use one of {', '.join(TOY_CHOICES)}")
        from directedit._toy import toy_bundle

        return toy_bundle(ref.name, random_init=random_init, device=device, dtype=dtype).adapter()
    from flowcore.adapters import load_model as flow_load

    model = flow_load(str(ref.path or ref.name), torch_dtype=dtype, device=None if offload else device)
    if offload:
        if model.pipe is None:
            raise CliError("--offload needs a diffusers pipeline (hub id or local folder)")
        model.pipe.enable_model_cpu_offload()
    return model


def _config(args: argparse.Namespace, targets: int = 1) -> Any:
    from directedit.config import DirectEditConfig, ValueInjection

    injection = None
    if not getattr(args, "no_injection", False):
        blocks: Any = args.blocks
        if blocks not in ("default", "single", "double", "all"):
            blocks = tuple(b.strip() for b in blocks.split(",") if b.strip())
        injection = ValueInjection(ratio=args.attn_ratio, steps=args.attn_steps, blocks=blocks,
                                   include_attn2=args.attn2, rows=args.rows)
    return DirectEditConfig(num_steps=args.steps, source_guidance=args.source_guidance,
                            target_guidance=args.target_guidance, injection=injection, snap_source=not args.no_snap,
                            source_branch=args.source_branch, skip_steps=args.skip_steps, sigma_grid=args.sigma_grid,
                            fold_unit_guidance=args.fold_unit_guidance,
                            mask_dilation_px=getattr(args, "mask_dilation", None))


def _read_image(path: str) -> torch.Tensor:
    from flowcore.images import check_image, to_tensor

    if not Path(path).is_file():
        raise CliError(f"image file not found: {path!r}")
    return check_image(to_tensor(path), name="image")


def _mask_arg(args: argparse.Namespace, image: torch.Tensor) -> Any:
    """Validate the mask before any network call (a missing file or a misfit fails here)."""
    from directedit.masks import AttentionMask, UserMask, load_user_mask

    if args.mask is None:
        return None
    if args.mask == "attention":
        words = None if args.mask_words is None else [w.strip() for w in args.mask_words.split(",") if w.strip()]
        return AttentionMask(words, source_prompt=args.source_prompt, target_prompt=args.target_prompt[0])
    load_user_mask(args.mask, (image.shape[-2], image.shape[-1]), invert=args.invert_mask)  # raises early
    return UserMask(args.mask, invert=args.invert_mask)


def _stem(args: argparse.Namespace) -> str:
    return args.name or Path(args.image).stem


def _mask_image(model: Any, mask: torch.Tensor, padded: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """The blend mask as a pixel image (nearest upsampling of the blend grid), cropped to the original size."""
    from directedit.masks import blend_grid

    gh, gw = blend_grid(model, *padded)
    grid = mask[:1].reshape(1, 1, gh, gw).float().cpu()
    up = torch.nn.functional.interpolate(grid, size=padded, mode="nearest")
    return up[..., : original[0], : original[1]]


def _base_meta(args: argparse.Namespace, model: Any, device: torch.device, dtype: torch.dtype,
               image: torch.Tensor) -> dict[str, Any]:
    pm = model.pad_multiple
    h, w = image.shape[-2:]
    return {"package": "directedit", "model_id": args.model, "model_class": type(model).__name__,
            "dtype": str(dtype).removeprefix("torch."), "device": str(device), "seed": args.seed,
            "image_size": [h, w], "padded_size": [-(-h // pm) * pm, -(-w // pm) * pm],
            "source_prompt": args.source_prompt}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from flowcore.metrics import psnr

    return float(psnr(a.float(), b.float(), max_db=200.0)[0])


def _vae_ceiling(model: Any, image: torch.Tensor) -> float:
    from flowcore.images import crop, pad_to_multiple

    padded, pad = pad_to_multiple(image, model.pad_multiple, mode="white")
    z = model.encode_image(padded.to(model.device))
    back = crop(model.decode_image(z, height=padded.shape[-2], width=padded.shape[-1]).float().cpu(), pad)
    return _psnr(back, image)


# --- commands -----------------------------------------------------------------------------------------------------
def cmd_edit(args: argparse.Namespace) -> dict[str, Any]:
    from directedit.core import direct_edit
    from flowcore.io import save_result

    device = resolve_device(args.device)
    dtype = _dtype(args, device)
    image = _read_image(args.image)
    mask = _mask_arg(args, image)
    config = _config(args, len(args.target_prompt))
    model = load_model(args.model, device=device, dtype=dtype, random_init=args.random_init, offload=args.offload)
    from directedit.core import encode_prompts

    encode_prompts(model, [args.source_prompt, *args.target_prompt])  # unreadable prompts fail before the run
    result = direct_edit(model, image, args.source_prompt, args.target_prompt, config=config, mask=mask)
    out, stem = Path(args.output_dir), _stem(args)
    meta = _base_meta(args, model, device, dtype, image)
    rec_img = torch.stack(result.reconstruction_image) if result.reconstruction_image else None
    meta.update(_result_meta(result, result.cache, args.target_prompt, image, rec_img))
    extra: dict[str, Any] = {"edit": torch.stack(result.images or []), "rec": rec_img}
    if result.mask is not None:
        extra["mask"] = _mask_image(model, result.mask, tuple(meta["padded_size"]), tuple(meta["image_size"]))
    if args.save_cache and result.cache is not None:
        cache_path = out / f"{stem}.cache.safetensors"
        meta["cache"] = cache_path.name
        result.cache.save(cache_path)
    json_path = save_result(out / stem, None, meta, extra_images=extra)
    return {"command": "edit", "json": str(json_path), "nfe": result.nfe.calls,
            "reconstruction_psnr_db": meta["reconstruction"]["psnr_db"], "outputs": _outputs(json_path)}


def _outputs(json_path: Path) -> list[str]:
    import json

    return json.loads(Path(json_path).read_text())["outputs"]


def _result_meta(result: Any, cache: Any, targets: list[str], image: torch.Tensor,
                 rec: torch.Tensor | None) -> dict[str, Any]:
    import flowcore.io as fio

    sigmas = None if cache is None else cache.sigmas.tolist()
    return {
        "method": result.method, "versions": {"directedit": fio.package_versions("directedit")["directedit"]},
        "target_prompts": list(targets), "prompts": {"source": None if cache is None or not cache.source_cond.prompts
                                                     else cache.source_cond.prompts[0], "targets": list(targets)},
        "config": result.config, "sigmas": sigmas, "K": result.K,
        "sites": result.sites, "mask": result.mask_info, "nfe": result.nfe.to_dict(), "timings_s": result.timings,
        "reconstruction": {"max_abs_latent_err": max(result.trace) if result.trace else None,
                           "psnr_db": None if rec is None else _psnr(rec, image)},
    }


def cmd_reconstruct(args: argparse.Namespace) -> dict[str, Any]:
    from directedit import baselines
    from directedit.core import decode_latents, edit, encode_prompts, invert
    from flowcore.images import pad_to_multiple
    from flowcore.io import save_result

    device = resolve_device(args.device)
    dtype = _dtype(args, device)
    image = _read_image(args.image)
    config = _config(args)
    model = load_model(args.model, device=device, dtype=dtype, random_init=args.random_init, offload=args.offload)
    cond = encode_prompts(model, [args.source_prompt])
    padded, pad = pad_to_multiple(image, model.pad_multiple, mode="white")
    z0 = model.encode_image(padded.to(model.device))
    size = (padded.shape[-2], padded.shape[-1])
    start = time.perf_counter()
    cache = invert(model, z0, cond, config=config, image_size=size, original_size=tuple(image.shape[-2:]))
    if args.method == "directedit":
        result = edit(model, cache, cond, config=config)
    elif args.method == "naive":
        result = baselines.naive_euler(model, z0, cond, cond, cache=cache, target_guidance=args.source_guidance,
                                       injection=config.injection)
    else:
        method = args.method.replace("-", "_")
        steps = baselines.settings_for_nfe(method, 2 * args.steps, "flux")["num_steps"]
        result = baselines.run(method, model, z0, cond, cond, num_steps=steps, source_guidance=args.source_guidance,
                               target_guidance=args.source_guidance, injection=config.injection, image_size=size)
    rec = torch.stack(decode_latents(model, result.reconstruction, cache, pad))
    ceiling = _vae_ceiling(model, image)
    psnr_db = _psnr(rec, image)
    out, stem = Path(args.output_dir), _stem(args)
    meta = _base_meta(args, model, device, dtype, image)
    meta.update(_result_meta(result, cache, [], image, rec))
    meta.update(method=args.method, vae_ceiling_psnr_db=ceiling, wall_s=time.perf_counter() - start)
    json_path = save_result(out / stem, None, meta, extra_images={"rec": rec})
    return {"command": "reconstruct", "method": args.method, "psnr_db": psnr_db, "vae_ceiling_psnr_db": ceiling,
            "max_abs_latent_err": meta["reconstruction"]["max_abs_latent_err"], "nfe": result.nfe.calls,
            "json": str(json_path)}


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    from directedit import baselines
    from directedit.config import arch_of
    from directedit.core import decode_latents, edit, encode_prompts, invert
    from flowcore.images import pad_to_multiple
    from flowcore.io import atomic_write, save_result, write_json

    device = resolve_device(args.device)
    dtype = _dtype(args, device)
    image = _read_image(args.image)
    mask = _mask_arg(args, image)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m.replace("-", "_") not in ("directedit", "naive", "naive_euler", "rf_solver", "fireflow", "flowedit"):
            raise CliError(f"unknown method {m!r}; use directedit, naive, rf-solver, fireflow, flowedit")
    model = load_model(args.model, device=device, dtype=dtype, random_init=args.random_init, offload=args.offload)
    family = "flux" if arch_of(model) == "flux" else "sd3"
    src = encode_prompts(model, [args.source_prompt])
    tar = encode_prompts(model, args.target_prompt)
    padded, pad = pad_to_multiple(image, model.pad_multiple, mode="white")
    size = (padded.shape[-2], padded.shape[-1])
    z0 = model.encode_image(padded.to(model.device))
    out, stem = Path(args.output_dir), _stem(args)
    rows, records = [], {}
    cache = None
    for name in methods:
        method = {"naive": "naive_euler", "rf-solver": "rf_solver"}.get(name, name.replace("-", "_"))
        steps = baselines.settings_for_nfe(method, args.nfe, family)
        config = _config(args).replace(num_steps=steps["num_steps"])
        if method == "directedit":
            cache = invert(model, z0, src, config=config, image_size=size, original_size=tuple(image.shape[-2:]),
                           mask_probe=mask if hasattr(mask, "observe") else None)
            result = edit(model, cache, tar, config=config, mask=mask)
        elif method == "flowedit":
            result = baselines.flowedit(model, z0, src, tar, generator=torch.Generator().manual_seed(args.seed),
                                        source_guidance=args.source_guidance, target_guidance=args.target_guidance,
                                        image_size=size, **steps)
        else:
            kw = dict(num_steps=steps["num_steps"], source_guidance=args.source_guidance,
                      target_guidance=args.target_guidance, injection=config.injection, image_size=size,
                      mask=None if hasattr(mask, "observe") else mask)
            result = baselines.run(method, model, z0, src, tar, **kw)
        decode_ref = cache if cache is not None else invert_stub(model, size, tuple(image.shape[-2:]))
        edited = torch.stack(decode_latents(model, result.edited, decode_ref, pad))
        rec = None if result.reconstruction is None else torch.stack(
            decode_latents(model, result.reconstruction, decode_ref, pad))
        meta = {**_base_meta(args, model, device, dtype, image), "method": method, "config": result.config,
                "target_prompts": args.target_prompt, "nfe": result.nfe.to_dict(), "timings_s": result.timings}
        save_result(out / f"{stem}.{method}", edited, meta)
        row = {"method": method, "calls": result.nfe.calls, "rows": result.nfe.rows,
               "rec_psnr_db": None if rec is None else _psnr(rec, image),
               "wall_s": result.timings.get("total_s", sum(result.timings.values()))}
        rows.append(row)
        records[method] = meta
    md = ["| method | calls | rows | rec PSNR dB | wall s |", "|---|---|---|---|---|"]
    for r in rows:
        rec_db = "n/a" if r["rec_psnr_db"] is None else f"{r['rec_psnr_db']:.2f}"
        md.append(f"| {r['method']} | {r['calls']} | {r['rows']} | {rec_db} | {r['wall_s']:.2f} |")
    atomic_write(out / "compare.md", "\n".join(md) + "\n")
    write_json(out / "compare.json", {"nfe": args.nfe, "rows": rows, "methods": records})
    return {"command": "compare", "nfe": args.nfe, "rows": rows, "output_dir": str(out)}


def invert_stub(model: Any, size: tuple[int, int], original: tuple[int, int]) -> Any:
    """A minimal stand-in carrying the image sizes for :func:`decode_latents`."""
    from types import SimpleNamespace

    return SimpleNamespace(image_size=size, original_size=original)


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from directedit.demo import DemoOptions, run_demo

    device = resolve_device(args.device)
    models = tuple(args.model)
    pairs = args.pairs if args.pairs is not None else (8 if args.quick else 256)
    dtype = resolve_dtype(args.dtype)
    opts = DemoOptions(models=models, quick=args.quick, pairs=pairs, dev_pairs=args.dev_pairs, dtype=dtype,
                       batch_size=args.batch_size, steps=args.steps, seed=args.seed, random_init=args.random_init,
                       preset=args.preset, device=str(device), oracle=not args.no_oracle,
                       position=not args.no_position)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json == "-" else print
    report = run_demo(opts, Path(args.output_dir), log=log)
    summary: dict[str, Any] = {"command": "demo", "quick": args.quick, "wall_s": report["wall_s"],
                               "output_dir": str(args.output_dir)}
    for res in report["toys"]:
        summary[res["model"]] = {k: v.get("pass") for k, v in res["acceptance"].items()}
    if args.quick:
        summary["A7_wall_s"] = report["wall_s"]
    return summary


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from directedit.benchmarks import run_cpu_suite, run_gpu_suite

    out = Path(args.output_dir)
    suite = args.suite or ("gpu" if resolve_device(args.device).type == "cuda" else "cpu")
    if suite == "gpu":
        return run_gpu_suite(out, steps=args.steps or 10, repeats=args.repeats or 3, quick=args.quick)
    return run_cpu_suite(out, steps=args.steps or 30, repeats=args.repeats or 5, quick=args.quick)


COMMANDS = {"edit": cmd_edit, "reconstruct": cmd_reconstruct, "compare": cmd_compare, "demo": cmd_demo,
            "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        "directedit", build_parser(), COMMANDS, argv,
        user_errors=(CliError, *USER_ERRORS, TypeError, NotImplementedError),
        missing_label="the trained toy weights are missing",
        missing_hint="use --random-init for a plumbing check with random weights",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
