"""``t5-linearize`` command line: convert | finetune | generate | eval-toy | demo | bench (spec §5).

``--model`` is always the base model (a toy name, hub id or local path) and ``--transformer DIR`` a linearized
transformer folder. Every file is written through ``flowcore.io`` (atomically) with a sidecar JSON. Exit codes: 0
success, 1 bad input (the message says what to fix), 2 missing toy weights or missing demo assets.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowcore.cli import (
    USER_ERRORS,
    add_common_args,
    emit,
    resolve_device,
    resolve_dtype,
    resolve_model,
    run_cli,
)

PACKAGE = "t5-linearize"


def _out(name: str) -> str:
    return f"outputs/t5-linearize/{name}"


# --- argument parsers ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5-linearize",
        description="Linearize the softmax attention of SD3/SD3.5 and FLUX transformers into test-time-training "
                    "(TTT) layers, fine-tune them, generate, evaluate on the toy world, and benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _convert_parser(sub)
    _finetune_parser(sub)
    _generate_parser(sub)
    _eval_parser(sub)
    _demo_parser(sub)
    _bench_parser(sub)
    return parser


def _random_init_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--random-init", action="store_true",
                   help="toy models only: use the architecture with seeded random weights instead of the shipped "
                        "weights (plumbing tests; no trained weights needed)")


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="linearize a transformer and save it (diffusers folder + t5_linearize.json)",
                       description="Replace every selected softmax attention by a TTT layer, keep all pretrained "
                                   "weights, save the linearized transformer.")
    add_common_args(p, default_model="toy-sd3", default_output_dir=_out("convert"))
    p.add_argument("--preset", choices=["t5", "dit5_mixed", "classification"], default=None,
                   help="t5 = defaults; dit5_mixed = q/k affine + 5x5 window mixed 0.5; classification = swiglu3+dot")
    p.add_argument("--operator", choices=["ttt", "linear", "softmax"], default="ttt",
                   help="ttt (the method), linear (elu+1 ablation), softmax (plumbing control) (default: ttt)")
    p.add_argument("--inner", choices=["mlp2", "swiglu3"], default="mlp2", help="inner model (default: mlp2)")
    p.add_argument("--inner-loss", choices=["mse", "dot"], default=None,
                   help="inner loss (default: mse for mlp2, dot for swiglu3)")
    p.add_argument("--no-key-norm", action="store_true", help="disable the key instance norm")
    p.add_argument("--key-norm-eps", type=float, default=1.0, help="ε of the key instance norm (default: 1.0)")
    p.add_argument("--key-norm-stats", choices=["joint", "per_segment"], default="joint",
                   help="key statistics over all joint tokens or per image segment (default: joint)")
    p.add_argument("--no-locality", action="store_true", help="disable the depthwise locality convs")
    p.add_argument("--conv-init", choices=["zero", "default"], default="zero",
                   help="zero = identity at step 0; default = PyTorch's init (default: zero)")
    p.add_argument("--sites", nargs="+", default=["*"], metavar="GLOB",
                   help="site names/globs/kinds to linearize (default: all)")
    p.add_argument("--exclude-sites", nargs="+", default=[], metavar="GLOB", help="sites that keep softmax")
    _random_init_flag(p)


def _finetune_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a linearized transformer (or the softmax baseline)",
                       description="Rectified-flow fine-tuning under accelerate. Several processes: torchrun "
                                   "--nproc_per_node N -m t5_linearize finetune ... (CPU: add --device cpu).")
    add_common_args(p, default_model="toy-sd3", default_output_dir=_out("finetune"))
    p.add_argument("--transformer", type=Path, default=None, help="linearized transformer folder (from convert)")
    p.add_argument("--softmax-baseline", action="store_true",
                   help="fine-tune --model's own (unconverted) transformer with the same recipe")
    p.add_argument("--data", default="toy",
                   help="'toy' (fresh toy scenes), 'toy-edits' (toy instruction edits, for toy-kontext: the source "
                        "image goes in as the reference), 'self' (samples of the base model for --prompts-file) or "
                        "a folder with metadata.jsonl")
    p.add_argument("--guidance", type=float, default=None,
                   help="embedded guidance passed to guidance-distilled FLUX-family models (default: 2.5 with "
                        "--data toy-edits, else 1.0)")
    p.add_argument("--prompts-file", type=Path, default=None, help="--data self: one prompt per line")
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps (default: 3000)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (default: 32)")
    p.add_argument("--lr", type=float, default=None, help="lr of inherited weights (default: 1e-4 toy, 1e-5 real)")
    p.add_argument("--new-lr-mult", type=float, default=10.0, help="lr multiplier of the new parameters (default 10)")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default: 100)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: 1.0)")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of the teacher-velocity loss; the teacher is --model's transformer (default: 0)")
    p.add_argument("--distill-only", action="store_true", help="drop the flow loss (needs --distill-weight > 0)")
    p.add_argument("--resolution", type=int, default=1024, help="image-folder data: training resolution (default 1024)")
    p.add_argument("--cache-latents", action="store_true", help="image-folder data: encode each image once")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                   help="accelerate mixed precision (inner TTT maths stays fp32) (default: no)")
    p.add_argument("--grad-checkpointing", action="store_true", help="per-block gradient checkpointing")
    p.add_argument("--save-every", type=int, default=1000, help="accelerate checkpoint interval (default: 1000)")
    p.add_argument("--log-every", type=int, default=50, help="train_log.jsonl flush interval (default: 50)")
    p.add_argument("--snapshot-steps", type=int, nargs="*", default=[],
                   help="also save transformer-<step>/ at these steps")
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --output-dir) or a checkpoint folder")
    _random_init_flag(p)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images with a linearized transformer",
                       description="Text-to-image with the base pipeline and a linearized transformer.")
    add_common_args(p, default_model="toy-sd3", default_output_dir=_out("generate"))
    p.add_argument("--transformer", type=Path, required=True, help="linearized transformer folder")
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several images)")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (real models)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 28)")
    p.add_argument("--guidance", type=float, default=None, help="CFG / embedded guidance (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the model's)")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default=None,
                   help="TTT backend for this run (default: the transformer's config, auto)")
    p.add_argument("--name", default="t5", help="file stem of the outputs (default: t5)")
    _random_init_flag(p)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval-toy", help="judge a linearized toy-sd3 against the fine-tuned softmax and the original",
                       description="Generate the test prompts with the original toy-sd3, the fine-tuned softmax "
                                   "baseline and the linearized transformer (same noise per prompt); report judge "
                                   "accuracy per claim type and PSNR between them.")
    add_common_args(p, default_model="toy-sd3", default_output_dir=_out("eval-toy"))
    p.add_argument("--transformer", type=Path, required=True, help="linearized toy-sd3 transformer folder")
    p.add_argument("--softmax-ft", type=Path, default=None, help="fine-tuned softmax toy-sd3 transformer folder")
    p.add_argument("--n", type=int, default=512, help="number of test prompts (default: 512)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 28)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch (default: 32)")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the toy-world demonstration (spec §6)",
                       description="Without --train: evaluate the committed fine-tuned toy transformers. With "
                                   "--train: the full protocol (≈ 3–4 h on 2 cores); --preset ci is its 50-step "
                                   "smoke version on a random-init CI-sized toy-sd3.")
    add_common_args(p, default_model="toy-sd3", default_output_dir=_out("demo"))
    p.add_argument("--quick", action="store_true", help="32 prompts instead of 512 (≤ 2 min)")
    p.add_argument("--train", action="store_true", help="run the training protocol instead of loading the assets")
    p.add_argument("--ablations", action="store_true", help="with --train: also the eight 1000-step ablations")
    p.add_argument("--preset", choices=["full", "ci"], default="full", help="protocol size (default: full)")
    p.add_argument("--steps", type=int, default=None, help="with --train: override the fine-tuning steps")
    p.add_argument("--eval-prompts", type=int, default=None, help="with --train: override the number of prompts")
    p.add_argument("--lr", type=float, default=None,
                   help="with --train: lr of the inherited weights, the same for the T5 and the softmax runs "
                        "(default: 1e-4, or 1e-3 with --preset ci)")
    p.add_argument("--new-lr-mult", type=float, default=None,
                   help="with --train: lr multiplier of the T5 model's new parameters (default: 10)")
    p.add_argument("--train-only", nargs="+", choices=["t5", "softmax", "linear"], default=None,
                   help="with --train: train just these runs and stop (no evaluation); a later --train into the "
                        "same --output-dir reuses every finished run")
    p.add_argument("--export-assets", type=Path, default=None,
                   help="with --train (full): write the fp16 assets here (default: the package's assets/toy)")
    p.add_argument("--no-export", action="store_true", help="with --train: do not write the assets")


def _bench_parser(sub) -> None:
    from t5_linearize import bench

    p = sub.add_parser("bench", help="benchmarks (spec §8): ratios measured side by side",
                       description="layer (B1), block (B2) or transformer (B3, GPU) benchmark.")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="KIND")
    bench.layer_parser(kinds.add_parser("layer", help="B1: one attention operator (CPU)"))
    bench.block_parser(kinds.add_parser("block", help="B2: one SD3.5-Medium-shaped block (CPU)"))
    bench.transformer_parser(kinds.add_parser("transformer", help="B3: full SD3.5-shaped transformer (GPU)"))
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH", help="summary as JSON")


# --- model loading ---------------------------------------------------------------------------------------------------
def _toy_bundle(name: str, random_init: bool, seed: int, device: torch.device, dtype: torch.dtype):
    from t5_linearize import toy

    if random_init:
        bundle = toy.build_bundle(name, random_init=True, seed=seed)
    else:
        bundle = toy.load_bundle(name, device=device, dtype=dtype)
    return bundle if device.type == "cpu" else bundle.to(device=device)


def _base_adapter(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(adapter, bundle or None) of --model."""
    ref = resolve_model(args.model)
    if ref.is_toy:
        bundle = _toy_bundle(ref.name, getattr(args, "random_init", False), args.seed, device, dtype)
        return bundle.adapter(), bundle
    if getattr(args, "random_init", False):
        raise ValueError("--random-init works with toy models only")
    from flowcore.adapters import load_model

    return load_model(str(args.model), torch_dtype=dtype, device=device), None


def _linearize_config(args: argparse.Namespace):
    from t5_linearize.config import LinearizeConfig

    return LinearizeConfig(
        operator=args.operator, inner=args.inner, inner_loss=args.inner_loss, key_norm=not args.no_key_norm,
        key_norm_eps=args.key_norm_eps, key_norm_stats=args.key_norm_stats, locality=not args.no_locality,
        conv_init=args.conv_init, sites=tuple(args.sites), exclude_sites=tuple(args.exclude_sites),
        preset=args.preset,
    )


# --- commands --------------------------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> dict[str, Any]:
    from flowcore.io import package_versions, write_json
    from t5_linearize.models import linearize

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    config = _linearize_config(args)
    adapter, _ = _base_adapter(args, device, dtype)
    base = adapter.denoiser if next(adapter.denoiser.parameters()).dtype == dtype else adapter.denoiser.to(dtype)
    model = linearize(base, config, generator=torch.Generator().manual_seed(args.seed))
    out = Path(args.output_dir)
    from t5_linearize.training import _save_model

    _save_model(model, out)
    record = {"base_model": str(args.model), "random_init": bool(args.random_init), "seed": args.seed,
              **model.conversion_record(), "dtype": str(dtype),
              "versions": package_versions(PACKAGE, "flowcore", "flowkernels", "torch", "diffusers")}
    write_json(out / "t5_linearize.json", record)
    return {"command": "convert", "output_dir": str(out), "class": record["class"],
            "linearized_sites": len(record["linearized_sites"]), "new_parameters": record["new_parameters"],
            "frozen_modules": record["frozen_modules"]}


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from t5_linearize.models import T5FluxTransformer2DModel, T5SD3Transformer2DModel
    from t5_linearize.training import (
        TOY_LR,
        FinetuneConfig,
        ImageFolderData,
        ToyEditData,
        ToySceneData,
        finetune,
    )

    if args.softmax_baseline == (args.transformer is not None):
        raise ValueError("give exactly one of --transformer DIR (a linearized model) or --softmax-baseline")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    adapter, bundle = _base_adapter(args, device, torch.float32)
    if args.softmax_baseline:
        model = copy.deepcopy(adapter.denoiser)
    else:
        from diffusers import SD3Transformer2DModel

        cls = T5SD3Transformer2DModel if isinstance(adapter.denoiser, SD3Transformer2DModel) else \
            T5FluxTransformer2DModel
        model = cls.from_pretrained(args.transformer, torch_dtype=torch.float32)
        from t5_linearize.models import check_same_base

        check_same_base(model, adapter.denoiser, f"--model {args.model}")
    teacher = copy.deepcopy(adapter.denoiser) if args.distill_weight > 0 else None
    if args.data == "toy":
        data = ToySceneData(adapter, seed=args.seed)
    elif args.data == "toy-edits":
        if adapter.__class__.__name__ != "FluxKontextModel":
            raise ValueError(f"--data toy-edits trains an edit model: use --model toy-kontext (got {args.model})")
        data = ToyEditData(adapter, seed=args.seed)
    elif args.data == "self":
        if args.prompts_file is None:
            raise ValueError("--data self needs --prompts-file (one prompt per line)")
        from t5_linearize.training import self_generated_data

        prompts = [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
        size = 32 if bundle is not None else args.resolution
        data = self_generated_data(adapter, prompts, height=size, width=size, seed=args.seed)
    else:
        data = ImageFolderData(args.data, args.resolution, adapter, cache_latents=args.cache_latents)
    lr = args.lr if args.lr is not None else (TOY_LR if bundle is not None else 1e-5)
    config = FinetuneConfig(
        steps=args.steps, batch_size=args.batch_size, lr=lr, new_lr_mult=args.new_lr_mult,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip, distill_weight=args.distill_weight,
        distill_only=args.distill_only, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.grad_checkpointing, seed=args.seed, log_every=args.log_every,
        save_every=args.save_every, snapshot_steps=tuple(args.snapshot_steps), output_dir=str(args.output_dir),
        resume=args.resume, device="cpu" if device.type == "cpu" else "auto",
        guidance=args.guidance if args.guidance is not None else (2.5 if args.data == "toy-edits" else 1.0),
    )
    del dtype
    result = finetune(model, data, config, teacher=teacher, adapter=adapter)
    return {"command": "finetune", **result.to_dict(), "model": str(args.model),
            "softmax_baseline": bool(args.softmax_baseline)}


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    import flowkernels
    from flowcore.io import save_result
    from t5_linearize.models import T5SD3Transformer2DModel

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    ref = resolve_model(args.model)
    out = Path(args.output_dir)
    if ref.is_toy:
        if ref.name != "toy-sd3":
            raise ValueError("toy generation supports toy-sd3 (FLUX toys: use the Python API with a pipeline)")
        from t5_linearize import toy

        bundle = _toy_bundle(ref.name, args.random_init, args.seed, device, torch.float32)
        model = T5SD3Transformer2DModel.from_pretrained(args.transformer, torch_dtype=torch.float32).to(device)
        from t5_linearize.models import check_same_base

        check_same_base(model, bundle.denoiser, "toy-sd3")
        if args.backend:
            model.linearize_config.backend = args.backend
        images = toy.generate(bundle, model, args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance)
        config = model.linearize_config.to_dict()
    else:
        from t5_linearize.pipelines import pipeline_for_model

        pipe = pipeline_for_model(str(args.model), args.transformer, torch_dtype=dtype).to(device)
        generator = torch.Generator("cpu").manual_seed(args.seed)
        call = dict(prompt=list(args.prompt), num_inference_steps=args.steps or 28, generator=generator,
                    output_type="pt", height=args.height, width=args.width, ttt_backend=args.backend)
        if args.guidance is not None:
            call["guidance_scale"] = args.guidance
        if args.negative_prompt is not None:
            call["negative_prompt"] = [args.negative_prompt] * len(args.prompt)
        images = pipe(**{k: v for k, v in call.items() if v is not None}).images.float().cpu()
        config = pipe.transformer.linearize_config.to_dict()
    meta = {"model": str(args.model), "transformer": str(args.transformer), "prompts": list(args.prompt),
            "negative_prompt": args.negative_prompt, "steps": args.steps, "guidance": args.guidance,
            "height": args.height, "width": args.width, "seed": args.seed, "ttt_config": config,
            "backend_requested": args.backend, "backend_used": flowkernels.last_backend(), "package": PACKAGE,
            "args": {k: str(v) for k, v in vars(args).items() if k != "func"}}
    sidecar = save_result(out / args.name, images, meta)
    return {"command": "generate", "images": int(images.shape[0]), "sidecar": str(sidecar),
            "backend_used": flowkernels.last_backend()}


def cmd_eval_toy(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import SD3Transformer2DModel

    from t5_linearize import toy
    from t5_linearize.demo import _PAIRS, acceptance
    from t5_linearize.models import T5SD3Transformer2DModel

    bundle = toy.load_bundle("toy-sd3")
    models = {"original": bundle.denoiser,
              "T5": T5SD3Transformer2DModel.from_pretrained(args.transformer, torch_dtype=torch.float32).eval()}
    if args.softmax_ft is not None:
        models["ft-softmax"] = SD3Transformer2DModel.from_pretrained(args.softmax_ft, torch_dtype=torch.float32).eval()
    captions = toy.eval_captions(args.n)
    report, images = toy.evaluate_models(bundle, models, captions, seed=args.seed, steps=args.steps,
                                         batch_size=args.batch_size, pairs=_PAIRS("T5"))
    report["acceptance"] = acceptance(report, "T5", {})
    paths = toy.write_report(Path(args.output_dir), report, images, ["original", "ft-softmax", "T5"],
                             {"command": "eval-toy", "transformer": str(args.transformer),
                              "softmax_ft": str(args.softmax_ft), "seed": args.seed, "model": "toy-sd3"})
    return {"command": "eval-toy", **_headline(report), "report": str(paths["json"])}


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {"all_correct": {k: v["all_correct"] for k, v in report["models"].items()},
            "median_psnr_db": {k: v["psnr_median"] for k, v in report.get("pairs", {}).items()},
            "acceptance": {k: v.get("pass") for k, v in report.get("acceptance", {}).items()}}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from t5_linearize import demo

    if args.model != "toy-sd3":
        raise ValueError("the demo runs on toy-sd3 (the SD3 MMDiT of the toy world)")
    out = Path(args.output_dir)
    if args.train:
        export = None if args.no_export else (args.export_assets or demo.assets_dir())
        report = demo.run_protocol(out, preset=args.preset, seed=args.seed, steps=args.steps,
                                   ablations=args.ablations, eval_prompts=args.eval_prompts, export_assets=export,
                                   device=resolve_device(args.device), lr=args.lr, new_lr_mult=args.new_lr_mult,
                                   train_only=args.train_only)
        if args.train_only:
            return {"command": "demo --train --train-only", **report}
        summary = {"command": "demo --train", "preset": args.preset, **_headline(report),
                   "training": {k: {"final_loss": v["final_loss"], "first_loss_mean": v["first_loss_mean"],
                                    "last_loss_mean": v["last_loss_mean"], "finite": v["finite"]}
                                for k, v in report["training"].items()}}
    else:
        report = demo.run_demo(out, quick=args.quick, seed=args.seed)
        summary = {"command": "demo", "quick": args.quick, **_headline(report)}
    summary["report"] = str(out / "report.json")
    return summary


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from t5_linearize import bench

    runner = {"layer": bench.main_layer, "block": bench.main_block, "transformer": bench.main_transformer}[args.bench]
    rows = runner(args)
    keep = ("case", "provider", "ms_p50", "ratio", "ceiling")
    return {"command": f"bench {args.bench}", "rows": [{k: r.get(k) for k in keep} for r in rows]}


COMMANDS = {"convert": cmd_convert, "finetune": cmd_finetune, "generate": cmd_generate, "eval-toy": cmd_eval_toy,
            "demo": cmd_demo, "bench": cmd_bench}


def _report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """``emit``, except for ``bench`` without ``--json``: the benchmark already printed its table."""
    if args.command != "bench" or args.json is not None:
        emit(args, summary)


def main(argv: Sequence[str] | None = None) -> int:
    from t5_linearize.demo import AssetsMissing

    return run_cli("t5-linearize", build_parser(), COMMANDS, argv, extra_missing=(AssetsMissing,),
                   user_errors=(*USER_ERRORS, TypeError), report=_report)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
