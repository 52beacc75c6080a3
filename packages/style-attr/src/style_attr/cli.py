"""``style-attr`` command line (also ``python -m style_attr``).

Commands: ``build-dataset`` (alias ``dataset``), ``train-controlnet``, ``train``, ``generate``, ``sweep``, ``invert``,
``edit``, ``demo``, ``eval-toy``, ``bench``. Every command takes the common flags ``--model --output-dir --seed
--device --dtype --json [PATH]`` (flowcore.cli). Missing toy weights or style-attr toy assets exit with code 2 and a
message naming the command that produces them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["build_parser", "main"]

EXIT_MISSING = 2  # = flowcore.cli.EXIT_MISSING_WEIGHTS (run_cli)


def _common(parser: argparse.ArgumentParser, command: str, *, default_model: str | list[str] | None = "toy-unet",
            multiple: bool = False) -> None:
    from flowcore.cli import add_common_args

    add_common_args(parser, default_model=default_model, multiple_models=multiple,
                    default_output_dir=f"outputs/style-attr/{command}")


def _attr_values(items: Sequence[str] | None, flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {flag} takes NAME=VALUE (e.g. {flag} width=0.8), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"error: {flag} {item!r}: {value!r} is not a number") from None
    return out


def _sweep(spec: str | None) -> tuple[str, list[float]] | None:
    if spec is None:
        return None
    try:
        key, rng = spec.split("=", 1)
        lo, hi, step = (float(v) for v in rng.split(":"))
    except ValueError:
        raise SystemExit(f"error: --sweep takes NAME=START:STOP:STEP (e.g. width=0:1.2:0.1), got {spec!r}") from None
    if step <= 0 or hi < lo:
        raise SystemExit("error: --sweep needs STOP >= START and STEP > 0")
    n = int(round((hi - lo) / step)) + 1
    return key.strip(), [round(lo + k * step, 6) for k in range(n)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="style-attr",
        description="Continuous stylistic attribute sliders: attribute ControlNets with λ-token cross-attention, "
        "guidance composition and null-parameter inversion (SD1.5, SD3/SD3.5, toy-unet, toy-sd3).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # build-dataset ---------------------------------------------------------------------------------------------
    for name in ("build-dataset", "dataset"):
        p = sub.add_parser(name, help="filter renditions of a photo folder or toy scenes with continuous λ"
                           + (" (alias of build-dataset)" if name == "dataset" else ""))
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--images", type=Path, help="folder of photos (any size/mode; unreadable files are skipped)")
        src.add_argument("--toy", type=int, metavar="N", help="use N toy-world scenes instead of photos")
        p.add_argument("--family", required=True, choices=["outline", "contrast", "watercolor", "pattern"],
                       help="filter family")
        p.add_argument("--params", help="comma-separated parameters λ varies (default: all of the family's)")
        p.add_argument("--renditions", type=int, default=4, help="renditions per content image (default 4)")
        p.add_argument("--resolution", type=int, help="square side in px (default 512 photos, 32 toys)")
        p.add_argument("--captions", type=Path, help="captions.jsonl with {file, caption} lines "
                       "(default <images>/captions.jsonl, else sidecar .txt files, else '')")
        p.add_argument("--canny-low", type=int, default=100, help="Canny low threshold (photos; default 100)")
        p.add_argument("--canny-high", type=int, default=200, help="Canny high threshold (photos; default 200)")
        p.add_argument("--shard-size", type=int, default=256, help="content images per shard (default 256)")
        p.add_argument("--latents", metavar="MODEL", help="cache fp16 VAE latents of this model in the shards")
        p.add_argument("--split", default="train", choices=["train", "val", "test"], help="toy split (default train)")
        p.add_argument("--resume", action="store_true", help="continue an interrupted build in --output-dir")
        _common(p, "dataset", default_model=None)

    # train-controlnet -------------------------------------------------------------------------------------------
    p = sub.add_parser("train-controlnet", help="train the toy-sd3 (or SD3.5-medium) edge ControlNet")
    p.add_argument("--data", help="unused for toys (scenes are drawn on the fly); reserved for photo datasets")
    p.add_argument("--steps", type=int, default=3000, help="optimisation steps (default 3000)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--prompt-dropout", type=float, default=0.5, help="probability of an empty caption (default 0.5)")
    p.add_argument("--num-layers", type=int, help="ControlNet depth (default: transformer depth − 1)")
    p.add_argument("--random-init", action="store_true", help="testing: start from a random-weight toy")
    p.add_argument("--preset", default="full", choices=["full", "ci"], help="toy size preset with --random-init")
    _common(p, "train-controlnet", default_model="toy-sd3")

    # train --------------------------------------------------------------------------------------------------------
    p = sub.add_parser("train", help="train an attribute network (or the prompt-level baseline)")
    p.add_argument("--data", required=True, help="dataset folder from build-dataset")
    p.add_argument("--controlnet", help="the base edge ControlNet (folder or hub id; toy-sd3: the committed asset)")
    p.add_argument("--steps", type=int, default=5000, help="optimisation steps (default 5000)")
    p.add_argument("--beta", type=float, default=5.0, help="regulariser weight β (default 5)")
    p.add_argument("--reg-weighting", default="elementwise", choices=["elementwise", "global"],
                   help="regulariser weighting (default elementwise)")
    p.add_argument("--reg-input", default="paired", choices=["paired", "shared"],
                   help="regulariser branch input: z_0 from the reference (paired) or z_k (shared)")
    p.add_argument("--anchor-reference", action=argparse.BooleanOptionalAction, default=None,
                   help="give the λ = 0 regulariser rows the base loss too (default: on with --reg-input paired; "
                        "without it the λ = 0 branch learns the attribute backwards, see the README)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-4 toys, 1e-4 real models)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size over all processes (default 32)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="accelerate precision")
    p.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint the denoiser's blocks (saves memory)")
    p.add_argument("--prompt-dropout", type=float, default=0.5, help="probability of an empty caption (default 0.5)")
    p.add_argument("--baseline", default="none", choices=["none", "prompt-level", "prompt-text"],
                   help="train the prompt-level baseline instead of the attribute network")
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint interval in steps (0: never)")
    p.add_argument("--log-every", type=int, default=10, help="train_log.jsonl interval in steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the saved layers (float16 for the committed toy assets)")
    p.add_argument("--name", default="attr", help="network name (attribute keys are '<name>.<param>')")
    p.add_argument("--hidden-dim", type=int, help="embedder width h (default 64 toys, 256 real)")
    p.add_argument("--tokens-per-param", type=int, default=4, help="λ-tokens per parameter m (default 4)")
    p.add_argument("--random-init", action="store_true", help="testing: random-weight toys instead of trained ones")
    p.add_argument("--preset", default="full", choices=["full", "ci"], help="toy size preset with --random-init")
    _common(p, "train")

    # generate / sweep --------------------------------------------------------------------------------------------
    for name in ("generate", "sweep"):
        p = sub.add_parser(name, help="text-to-image with sliders" if name == "generate" else
                           "a λ sweep and its picture strip (generate with --sweep)")
        _gen_args(p, sweep_required=name == "sweep")
        _common(p, name)

    # invert / edit ----------------------------------------------------------------------------------------------------
    p = sub.add_parser("invert", help="invert a real image for slider edits")
    _model_args(p)
    p.add_argument("--image", type=Path, required=True, help="the photo (size must suit the model)")
    p.add_argument("--prompt", default="", help="its caption (default '')")
    p.add_argument("--method", default="null_param", choices=["null_param", "plain", "directedit"],
                   help="null-parameter (default), plain CFG-1 pivot, or directedit's exact inversion (flow models)")
    p.add_argument("--inner-steps", type=int, default=10, help="null-parameter Adam steps per denoising step")
    p.add_argument("--ref", action="append", metavar="P=V", help="λ_ref per parameter (default 0)")
    p.add_argument("--name", default="inversion", help="file stem (default inversion)")
    _common(p, "invert")
    p = sub.add_parser("edit", help="edit an inverted image (or invert --image first) with sliders")
    _model_args(p)
    p.add_argument("--inversion", type=Path, help="inversion.safetensors from `invert`")
    p.add_argument("--image", type=Path, help="invert this photo first (with --method)")
    p.add_argument("--prompt", default="", help="caption for --image")
    p.add_argument("--method", default="null_param", choices=["null_param", "plain", "directedit"],
                   help="inversion method for --image")
    p.add_argument("--inner-steps", type=int, default=10, help="null-parameter Adam steps per denoising step")
    p.add_argument("--set", action="append", metavar="P=V", help="slider value, e.g. --set width=0.8 (repeatable)")
    p.add_argument("--sweep", metavar="P=A:B:S", help="several edits over a λ range, with a strip")
    p.add_argument("--name", default="edit", help="file stem (default edit)")
    _common(p, "edit")

    # demo / eval-toy / bench -------------------------------------------------------------------------------------------
    for name in ("demo", "eval-toy"):
        p = sub.add_parser(name, help="the §6 toy demonstration on committed assets" if name == "demo" else
                           "the §6 evaluation of networks you trained (--attr per --model)")
        p.add_argument("--family", default="outline", help="filter family (default outline)")
        p.add_argument("--scenes", type=int, default=None, help="held-out scenes (default 64; 4 with --quick)")
        p.add_argument("--quick", action="store_true",
                       help="toy-sd3, 4 scenes (or --scenes), λ ∈ {0, 0.4, 0.8, 1.2}, 2 inversion scenes (≤ 3 min)")
        if name == "eval-toy":
            p.add_argument("--attr", action="append", type=Path, help="trained network folder, one per --model")
            p.add_argument("--baseline", action="append", type=Path, help="prompt-level baseline folder per --model")
        _common(p, name, default_model=["toy-unet", "toy-sd3"], multiple=True)
    p = sub.add_parser("bench", help="§8 benchmarks: ratios measured side by side")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes")
    p.add_argument("--only", action="append", help="run only these benchmark ids (B1..B6)")
    _common(p, "bench")
    return parser


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlnet", help="the base edge ControlNet (folder or hub id); toys: built in")
    p.add_argument("--attr", action="append", type=Path, help="attribute network folder (repeatable)")
    p.add_argument("--w1", type=float, help="CFG scale (default: the model's, 7.5 toy-unet, 5.0 toy-sd3)")
    p.add_argument("--w2", type=float, default=1.0, help="attribute scale w2 (default 1)")
    p.add_argument("--steps", type=int, help="sampling steps (default 50 VP, 28 flow)")
    p.add_argument("--random-init", action="store_true", help="testing: random-weight toys (no trained weights)")
    p.add_argument("--preset", default="full", choices=["full", "ci"], help="toy size preset with --random-init")


def _gen_args(p: argparse.ArgumentParser, sweep_required: bool) -> None:
    _model_args(p)
    p.add_argument("--prompt", required=True, help="the text prompt")
    edges = p.add_mutually_exclusive_group()
    edges.add_argument("--edges", type=Path, help="edge map image (white edges on black)")
    edges.add_argument("--edges-from", type=Path, help="take the edges of this image (Canny; toys: edge_map)")
    edges.add_argument("--self-edges", action="store_true", help="edges of a first λ_ref pass with the same seed")
    p.add_argument("--size", type=int, help="square size for --self-edges (default: 32 toys, 512 real)")
    p.add_argument("--set", action="append", metavar="P=V", help="slider value, e.g. --set width=0.8 (repeatable)")
    p.add_argument("--ref", action="append", metavar="P=V", help="λ_ref, e.g. --ref width=0.5 (default 0)")
    p.add_argument("--sweep", required=sweep_required, metavar="P=A:B:S", help="λ sweep, e.g. width=0:1.2:0.1")
    p.add_argument("--act-t", type=float, default=0.1, help="sampling progress where the sliders switch on")
    p.add_argument("--negative-prompt", help="negative prompt (default '')")
    p.add_argument("--name", help="file stem (default: the command name)")


# --- commands -----------------------------------------------------------------------------------------------------------
def _device(args: argparse.Namespace) -> torch.device:
    from flowcore.cli import resolve_device

    return resolve_device(args.device)


def _pipeline(args: argparse.Namespace) -> Any:
    from flowcore.cli import resolve_dtype
    from style_attr.models import load_base
    from style_attr.pipeline import StyleAttrPipeline

    model = load_base(args.model, controlnet=args.controlnet, device=_device(args), dtype=resolve_dtype(args.dtype),
                      random_init=bool(getattr(args, "random_init", False)), preset=getattr(args, "preset", "full"))
    pipe = StyleAttrPipeline.from_model(model)
    for path in args.attr or []:
        pipe.load_attribute(path)
    if getattr(args, "random_init", False) and not args.attr:
        from style_attr.testing import attach_random

        attach_random(model.controlnet, name="attr", hidden_dim=16)
    return pipe


def _meta(args: argparse.Namespace, pipe: Any, **extra: Any) -> dict[str, Any]:
    skip = {"func"}
    return {"package": "style-attr", "command": args.command, "model": args.model, "seed": args.seed,
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip},
            "networks": {n: net.fingerprint() for n, net in pipe.attributes.items()}, **extra}


def cmd_build_dataset(args: argparse.Namespace) -> dict[str, Any]:
    from style_attr.dataset import build_dataset

    latents = None
    if args.latents:
        from style_attr.models import load_base

        latents = load_base(args.latents, device=_device(args), need_controlnet=False)
    manifest = build_dataset(args.output_dir, family=args.family, images=args.images, toy=args.toy,
                             params=args.params.split(",") if args.params else None, renditions=args.renditions,
                             resolution=args.resolution, captions=args.captions, canny_low=args.canny_low,
                             canny_high=args.canny_high, shard_size=args.shard_size, latents_model=latents,
                             seed=args.seed, split=args.split, resume=args.resume, progress=True)
    return {"output_dir": str(args.output_dir), "content_images": manifest["num_content"],
            "records": manifest["num_records"], "shards": len(manifest["shards"]), "skipped": len(manifest["skipped"])}


def cmd_train_controlnet(args: argparse.Namespace) -> dict[str, Any]:
    from style_attr.training import ControlNetTrainConfig, train_controlnet

    config = ControlNetTrainConfig(output_dir=str(args.output_dir), model=args.model, data=args.data, steps=args.steps,
                                   batch_size=args.batch_size, lr=args.lr, prompt_dropout=args.prompt_dropout,
                                   num_layers=args.num_layers, seed=args.seed, device=args.device,
                                   random_init=args.random_init, preset=args.preset)
    return train_controlnet(config)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from style_attr.training import TrainConfig, train_attribute_net

    config = TrainConfig(data=args.data, output_dir=str(args.output_dir), model=args.model, controlnet=args.controlnet,
                         steps=args.steps, beta=args.beta, reg_weighting=args.reg_weighting, reg_input=args.reg_input,
                         anchor_reference=args.anchor_reference,
                         lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                         prompt_dropout=args.prompt_dropout, baseline=args.baseline, save_every=args.save_every,
                         log_every=args.log_every, resume=args.resume, seed=args.seed, name=args.name,
                         tokens_per_param=args.tokens_per_param, hidden_dim=args.hidden_dim, device=args.device,
                         random_init=args.random_init, preset=args.preset, save_dtype=args.save_dtype)
    return train_attribute_net(config, progress=True)


def _strip(images: torch.Tensor) -> torch.Tensor:
    return torch.cat(list(images), dim=-1)[None]


def cmd_generate(args: argparse.Namespace) -> dict[str, Any]:
    from flowcore.io import save_result

    pipe = _pipeline(args)
    values = _attr_values(args.set, "--set")
    refs = _attr_values(args.ref, "--ref")
    sweep = _sweep(args.sweep)
    kwargs: dict[str, Any] = {}
    if args.edges is not None:
        kwargs["edge_image"] = args.edges
    elif args.edges_from is not None:
        kwargs["image"] = args.edges_from
    elif args.self_edges:
        size = args.size or (32 if args.model.startswith("toy-") else 512)
        kwargs.update(edge_image="self", height=size, width=size)
    else:
        raise SystemExit("error: pass --edges IMG, --edges-from IMG or --self-edges")
    grid = [None] if sweep is None else sweep[1]
    images, timings = [], []
    for value in grid:
        attrs = dict(values)
        if sweep is not None:
            attrs[sweep[0]] = value
        start = time.perf_counter()
        out = pipe(args.prompt, attributes=attrs or None, lambda_ref=refs or None, attribute_scale=args.w2,
                   act_t=args.act_t, num_inference_steps=args.steps, guidance_scale=args.w1,
                   negative_prompt=args.negative_prompt, generator=torch.Generator().manual_seed(args.seed),
                   output_type="pt", **kwargs)
        timings.append(time.perf_counter() - start)
        images.append(out.images)
    stem = Path(args.output_dir) / (args.name or args.command)
    meta = _meta(args, pipe, **out.info, lam=values, lam_ref=refs,
                 sweep=None if sweep is None else {"param": sweep[0], "values": sweep[1]}, timings_s=timings,
                 inverter=None)
    batch = torch.cat(images)
    extra = {"strip": _strip(batch)} if sweep is not None else None
    sidecar = save_result(stem, batch, meta, extra_images=extra)
    return {"images": len(images), "sidecar": str(sidecar), "seconds": round(sum(timings), 3)}


def cmd_invert(args: argparse.Namespace) -> dict[str, Any]:
    from flowcore.io import write_json
    from style_attr.images_io import load_model_image

    pipe = _pipeline(args)
    image = load_model_image(args.image, pipe.model)
    start = time.perf_counter()
    inv = pipe.invert(image, args.prompt, method=args.method, num_inference_steps=args.steps, guidance_scale=args.w1,
                      num_inner_steps=args.inner_steps, lambda_ref=_attr_values(args.ref, "--ref") or None,
                      attribute_scale=args.w2)
    path = inv.save(Path(args.output_dir) / f"{args.name}.safetensors")
    meta = _meta(args, pipe, method=args.method, w1=inv.w1, terms=inv.terms, timings_s=time.perf_counter() - start)
    write_json(Path(args.output_dir) / f"{args.name}.run.json", meta)
    return {"inversion": str(path), "method": args.method, "steps": inv.num_steps,
            "seconds": round(time.perf_counter() - start, 3)}


def cmd_edit(args: argparse.Namespace) -> dict[str, Any]:
    from flowcore.io import save_result
    from style_attr.composition import InversionResult
    from style_attr.images_io import load_model_image

    pipe = _pipeline(args)
    if args.inversion is not None:
        inv = InversionResult.load(args.inversion)
    elif args.image is not None:
        inv = pipe.invert(load_model_image(args.image, pipe.model), args.prompt, method=args.method,
                          num_inference_steps=args.steps, guidance_scale=args.w1, num_inner_steps=args.inner_steps,
                          attribute_scale=args.w2)
    else:
        raise SystemExit("error: pass --inversion FILE (from `style-attr invert`) or --image PHOTO")
    values = _attr_values(args.set, "--set")
    sweep = _sweep(args.sweep)
    grid = [None] if sweep is None else sweep[1]
    images = []
    for value in grid:
        attrs = dict(values)
        if sweep is not None:
            attrs[sweep[0]] = value
        images.append(pipe.edit(inv.to(pipe.model.device), attrs, attribute_scale=args.w2, output_type="pt").images)
    batch = torch.cat(images)
    meta = _meta(args, pipe, inverter=inv.method, lam=values, w1=inv.w1,
                 sweep=None if sweep is None else {"param": sweep[0], "values": sweep[1]})
    sidecar = save_result(Path(args.output_dir) / args.name, batch, meta,
                          extra_images={"strip": _strip(batch)} if sweep is not None else None)
    return {"images": len(images), "sidecar": str(sidecar), "method": inv.method}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from style_attr.evaluate import run_demo

    models = list(args.model)
    if args.quick and models == ["toy-unet", "toy-sd3"]:
        # toy-sd3: the shipped toy-unet does not yet sample clean images from noise (flowcore.toy gates U1-U4).
        models = ["toy-sd3"]
    summary = run_demo(models, args.output_dir, family=args.family, scenes=args.scenes, quick=args.quick,
                       seed=args.seed, attrs=getattr(args, "attr", None), baselines=getattr(args, "baseline", None),
                       device=_device(args), progress=True)
    print(summary["table"], file=sys.stderr)
    return {"output_dir": str(args.output_dir), "results": [{k: v for k, v in r.items() if k != "per_scene"}
                                                             for r in summary["results"]]}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from style_attr.bench import run_benchmarks

    return run_benchmarks(args.output_dir, device=str(_device(args)), quick=args.quick, only=args.only)


COMMANDS = {"build-dataset": cmd_build_dataset, "dataset": cmd_build_dataset,
            "train-controlnet": cmd_train_controlnet, "train": cmd_train, "generate": cmd_generate,
            "sweep": cmd_generate, "invert": cmd_invert, "edit": cmd_edit, "demo": cmd_demo, "eval-toy": cmd_demo,
            "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    from flowcore.cli import USER_ERRORS, run_cli
    from style_attr.models import MissingAssetError

    return run_cli("style-attr", build_parser(), COMMANDS, argv, extra_missing=(MissingAssetError,),
                   user_errors=(*USER_ERRORS, KeyError))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
