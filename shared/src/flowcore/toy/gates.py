"""Quality gates of the toy world and the toy models (toyworld.md §9).

``evaluate(name)`` runs the gates of one model (``toy-clip``, ``toy-sd3``, ``toy-kontext``, ``toy-flux``,
``toy-unet``), of the procedural world (``world``: J1–J3, F1) or of the shipped weights (``weights``: Z1), on the
``test`` split with seeds ``0..n-1``, and returns one row per gate. Every model is sampled through its flowcore
adapter (``flowcore.sampling.sample``), the path every method package uses. Thresholds are fixed before training;
a miss is reported, never lowered.

    python -m flowcore.toy evaluate --model toy-sd3 [--n-scale 0.25] [--json [PATH]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowcore.toy.constants import COLORS, POSITIONS, SHAPES, SIZE_NAMES

__all__ = ["GATE_MODELS", "GateResult", "evaluate", "generate"]

SIZE = 32


@dataclass
class GateResult:
    """One gate: ``passed`` is None when the gate could not run (``note`` says why)."""

    id: str
    model: str
    setting: str
    n: int
    metric: str
    value: float | None
    threshold: str
    passed: bool | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(gid: str, model: str, setting: str, n: int, metric: str, value: float, op: str, thr: float,
         note: str = "") -> GateResult:
    ok = value >= thr if op == ">=" else value <= thr
    return GateResult(gid, model, setting, n, metric, float(value), f"{op} {thr:g}", bool(ok), note)


def _count(n: int, scale: float) -> int:
    return max(2, int(round(n * scale)))


# --- sampling through the adapter -----------------------------------------------------------------------------
@torch.no_grad()
def generate(model: Any, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, scale: float = 1.0,
             guidance: float | None = None, reference: Tensor | None = None, control: Any = None,
             image_embeds: Tensor | None = None, batch: int = 50) -> Tensor:
    """Images (B, 3, 32, 32) in [0, 1] from ``model`` (a FlowModel), one noise seed per prompt, batched."""
    from flowcore.guidance import guided
    from flowcore.sampling import sample

    out = []
    sched = model.schedule(steps, height=SIZE, width=SIZE)
    for start in range(0, len(prompts), batch):
        rows = slice(start, start + batch)
        p = list(prompts[rows])
        cond = model.encode_prompt(p)
        uncond = model.encode_prompt([""] * len(p)) if scale != 1.0 else None
        noise = torch.cat([model.prepare_noise(1, SIZE, SIZE, generator=torch.Generator().manual_seed(int(s)))
                           for s in seeds[rows]])
        kw: dict[str, Any] = {}
        if reference is not None:
            kw["reference"] = reference[rows]
        if control is not None:
            kw["control"] = control(rows)
        if image_embeds is not None:
            kw["image_embeds"] = image_embeds[rows]
        g = None if guidance is None else torch.full((len(p),), float(guidance))
        pred = guided(model, cond, uncond=uncond, scale=scale, guidance=g, **kw)
        z = sample(pred, noise.to(model.device), sched)
        out.append(model.decode_image(z, height=SIZE, width=SIZE).cpu())
    return torch.cat(out)


# --- world gates (no model) ------------------------------------------------------------------------------------
def _scene_attributes(scene: Any) -> set[tuple[str, str]]:
    attrs = {("background", scene.background.color)}
    for o in scene.objects:
        attrs |= {(f"{o.cell}:shape", o.shape), (f"{o.cell}:color", o.color), (f"{o.cell}:size", o.size)}
    return attrs


def _reading_accuracy(images: Tensor, scenes: Sequence[Any]) -> tuple[float, float]:
    from flowcore.toy.judge import read_scene

    readings = read_scene(images)
    correct = total = all_ok = 0
    for reading, scene in zip(readings, scenes):
        truth = _scene_attributes(scene)
        got = {("background", reading.background)}
        for o in reading.objects:
            got |= {(f"{o.cell}:shape", o.shape), (f"{o.cell}:color", o.color), (f"{o.cell}:size", o.size)}
        hits = len(truth & got)
        correct += hits
        total += len(truth)
        all_ok += int(hits == len(truth) and len(reading.objects) == len(scene.objects))
    return correct / total, all_ok / len(scenes)


def world_gates(scale: float = 1.0) -> list[GateResult]:
    from flowcore.toy.render import render
    from flowcore.toy.scene import sample_scene

    n = _count(2000, scale)
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    images = render(scenes)
    attr, strict = _reading_accuracy(images, scenes)
    rows = [_row("J1", "world", "judge, clean scenes", n, "attribute accuracy", attr, ">=", 0.999),
            _row("J1", "world", "judge, clean scenes", n, "all-correct", strict, ">=", 0.995)]
    g = torch.Generator().manual_seed(0)
    blurred = _gauss_blur(images, 0.5) + 0.03 * torch.randn(images.shape, generator=g)
    attr2, _ = _reading_accuracy(blurred.clamp(0, 1), scenes)
    rows.append(_row("J2", "world", "judge, blur 0.5 + noise 0.03", n, "attribute accuracy", attr2, ">=", 0.99))
    rows += _garment_gate(scale)
    rows += _filter_gate(scale)
    return rows


def _gauss_blur(images: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    pad = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _garment_gate(scale: float) -> list[GateResult]:
    from flowcore.toy.garment_judge import read_garment
    from flowcore.toy.tryon import render_mannequins, sample_mannequin

    n = _count(1000, scale)
    people = [sample_mannequin(0, i, "test") for i in range(n)]
    images = render_mannequins(people)
    masks = torch.stack([p.garment_mask() for p in people])
    hits = {"kind": 0, "color": 0, "pattern": 0}
    for reading, person in zip(read_garment(images, masks), people):
        for key, ok in reading.matches(person.garment).items():
            hits[key] += int(ok)
    return [_row("J3", "world", "garment judge, clean mannequins", n, f"{k} accuracy", v / n, ">=", 0.99)
            for k, v in hits.items()]


def _filter_curves(images: Tensor, lams: Sequence[float]) -> list[np.ndarray]:
    """Every filter and measurement of toyworld §4 as (len(lams), B) arrays of measured values."""
    from flowcore.toy.constants import WATERCOLOR_COMPONENTS
    from flowcore.toy.styles import apply_style, measure_style

    curves = []
    for name in ("outline", "contrast", "watercolor"):
        curves.append(np.stack([measure_style(apply_style(images, name, lam), name).numpy() for lam in lams]))
    for variant in ("hatch", "stripes", "halftone"):
        curves.append(np.stack([measure_style(apply_style(images, "pattern", lam, variant=variant), "pattern",
                                              component=variant).numpy() for lam in lams]))
    for k, comp in enumerate(WATERCOLOR_COMPONENTS):
        def vec(lam: float, k: int = k) -> list[float]:
            return [lam if i == k else 0.0 for i in range(len(WATERCOLOR_COMPONENTS))]

        ref = apply_style(images, "watercolor", vec(0.0)) if comp == "wobble" else None
        curves.append(np.stack([measure_style(apply_style(images, "watercolor", vec(lam)), "watercolor", ref=ref,
                                              component=comp).numpy() for lam in lams]))
    return curves


def _filter_gate(scale: float) -> list[GateResult]:
    from flowcore.metrics import spearman
    from flowcore.toy.render import render
    from flowcore.toy.scene import sample_scene

    n = _count(100, scale)
    lams = [round(0.1 * k, 1) for k in range(14)]
    images = render([sample_scene(0, i, "test") for i in range(n)])
    worst, perfect, count = 1.0, 0, 0
    for curve in _filter_curves(images, lams):
        for j in range(n):
            rho = spearman(torch.tensor(lams), torch.tensor(curve[:, j]))
            worst = min(worst, rho)
            perfect += int(rho >= 1 - 1e-12)
            count += 1
    return [_row("F1", "world", "every filter, λ ∈ {0, 0.1, …, 1.3}", n, "min Spearman ρ", worst, ">=", 0.95),
            _row("F1", "world", "every filter, λ ∈ {0, 0.1, …, 1.3}", n, "fraction with ρ = 1", perfect / count,
                 ">=", 0.90)]


# --- toy-clip ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def clip_gates(scale: float = 1.0, device: str = "cpu") -> list[GateResult]:
    from dataclasses import replace

    from flowcore.toy import load
    from flowcore.toy.render import render
    from flowcore.toy.scene import Scene, SceneConfig, sample_scene

    clip = load("toy-clip", device=device)
    n = _count(500, scale)
    scenes = [sample_scene(0, i, "test", SceneConfig(n_objects=1)) for i in range(n)]
    img = clip.image_encoder(render(scenes).to(device)).image_embeds
    img = torch.nn.functional.normalize(img.float(), dim=-1)

    def variants(scene: Scene, attr: str) -> tuple[list[str], int]:
        o, bg = scene.objects[0], scene.background
        values = {"color": COLORS, "shape": SHAPES, "size": SIZE_NAMES, "position": POSITIONS,
                  "background": COLORS}[attr]
        texts, truth = [], -1
        for v in values:
            if (attr == "color" and v == bg.color) or (attr == "background" and v == o.color):
                continue
            if attr == "background":
                s = Scene.unchecked(scene.objects, replace(bg, color=v))
            else:
                s = Scene.unchecked((replace(o, **{"cell" if attr == "position" else attr: v}),), bg)
            if s == scene or (attr == "background" and v == bg.color):
                truth = len(texts)
            texts.append(s.caption("full"))
        return texts, truth

    rows = []
    for attr, thr in (("color", 0.95), ("shape", 0.95), ("background", 0.95), ("size", 0.85), ("position", 0.85)):
        hits = 0
        for i, scene in enumerate(scenes):
            texts, truth = variants(scene, attr)
            _, pooled = clip.encode_prompt(texts)
            sims = torch.nn.functional.normalize(pooled.float(), dim=-1) @ img[i]
            hits += int(int(sims.argmax()) == truth)
        rows.append(_row("C1", "toy-clip", "zero-shot, one-object scenes", n, f"{attr} top-1", hits / n, ">=", thr))
    return rows


# --- toy-sd3 / toy-flux / toy-unet text-to-image ------------------------------------------------------------------
def s1_captions(n: int) -> tuple[list[str], list[bool]]:
    """The S1 set: ``n`` full test captions, 40% one-object scenes."""
    from flowcore.toy.scene import SceneConfig, sample_scene

    n_one = int(round(0.4 * n))
    scenes = [sample_scene(0, i, "test", SceneConfig(n_objects=1 if i < n_one else 2)) for i in range(n)]
    return [s.caption("full") for s in scenes], [i < n_one for i in range(n)]


def _alignment_rows(gid: str, model_name: str, setting: str, images: Tensor, captions: Sequence[str],
                    one: Sequence[bool], thresholds: dict[str, float]) -> list[GateResult]:
    from flowcore.toy.judge import alignment

    res = alignment(images, list(captions))
    scores = np.array([r.score for r in res])
    strict = np.array([r.strict for r in res], dtype=float)
    one_mask = np.array(one, dtype=bool)
    n = len(captions)
    rows = [_row(gid, model_name, setting, n, "alignment", scores.mean(), ">=", thresholds["alignment"])]
    if "one" in thresholds and one_mask.any():
        rows.append(_row(gid, model_name, setting, int(one_mask.sum()), "one-object alignment",
                         scores[one_mask].mean(), ">=", thresholds["one"]))
    if "strict" in thresholds:
        rows.append(_row(gid, model_name, setting, n, "strict", strict.mean(), ">=", thresholds["strict"]))
    return rows


def sd3_gates(scale: float = 1.0, device: str = "cpu") -> list[GateResult]:
    from flowcore.toy import load
    from flowcore.toy.judge import read_scene, rerender_psnr

    model = load("toy-sd3", device=device).adapter()
    n = _count(200, scale)
    captions, one = s1_captions(n)
    images = generate(model, captions, range(n), steps=28, scale=5.0)
    rows = _alignment_rows("S1", "toy-sd3", "28 steps, CFG 5", images, captions, one,
                           {"alignment": 0.90, "one": 0.95, "strict": 0.60})
    psnrs = rerender_psnr(images)
    rows.append(_row("S2", "toy-sd3", "28 steps, CFG 5", n, "median re-render PSNR (dB)",
                     float(np.median(psnrs)), ">=", 22.0))
    # S3 diversity: 10 prompts "a {color} {shape}" x 50 seeds
    prompts = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in
               zip(COLORS[:5] * 2, SHAPES + SHAPES)][:10]
    n_seeds = _count(50, scale)
    cells_min, bgs_min = 9, 7
    for k, p in enumerate(prompts):
        imgs = generate(model, [p] * n_seeds, range(1000 * k, 1000 * k + n_seeds), steps=28, scale=5.0)
        readings = read_scene(imgs)
        cells = {r.objects[0].cell for r in readings if r.objects}
        bgs = {r.background for r in readings}
        cells_min, bgs_min = min(cells_min, len(cells)), min(bgs_min, len(bgs))
    rows.append(_row("S3", "toy-sd3", f"10 prompts x {n_seeds} seeds", 10 * n_seeds, "min cells covered",
                     cells_min, ">=", 7))
    rows.append(_row("S3", "toy-sd3", f"10 prompts x {n_seeds} seeds", 10 * n_seeds, "min backgrounds covered",
                     bgs_min, ">=", 6))
    rows.append(_determinism_row("toy-sd3", lambda: generate(model, captions[:2], [0, 1], steps=4, scale=5.0)))
    return rows


def flux_gates(scale: float = 1.0, device: str = "cpu") -> list[GateResult]:
    from flowcore.toy import load

    model = load("toy-flux", device=device).adapter()
    n = _count(200, scale)
    captions, one = s1_captions(n)
    images = generate(model, captions, range(n), steps=28, guidance=3.5)
    return _alignment_rows("K3", "toy-flux", "T2I, 28 steps, guidance 3.5", images, captions, one,
                           {"alignment": 0.85})


def kontext_gates(scale: float = 1.0, device: str = "cpu", teacher: str | None = None) -> list[GateResult]:
    from flowcore.toy import load
    from flowcore.toy.constants import EDIT_KINDS
    from flowcore.toy.edits import sample_edit
    from flowcore.toy.judge import edit_success
    from flowcore.toy.render import render

    model = load("toy-kontext", device=device).adapter()
    per_kind = _count(50, scale)
    pairs = [sample_edit(0, i, "test", kinds=(kind,)) for kind in EDIT_KINDS for i in range(per_kind)]
    sources = render([p.source for p in pairs])
    reference = model.encode_image(sources.to(model.device))
    images = generate(model, [p.instruction for p in pairs], range(len(pairs)), steps=28, guidance=2.5,
                      reference=reference)
    results = edit_success(images, pairs)
    ok = np.array([r.success for r in results], dtype=float)
    bg = np.array([r.bg_psnr for r in results], dtype=float)
    n = len(pairs)
    rows = [_row("K1", "toy-kontext", "28 steps, guidance 2.5", n, "strict edit success", ok.mean(), ">=", 0.85)]
    for j, kind in enumerate(EDIT_KINDS):
        sl = slice(j * per_kind, (j + 1) * per_kind)
        rows.append(_row("K1", "toy-kontext", f"kind {kind}", per_kind, "strict edit success", ok[sl].mean(),
                         ">=", 0.70))
    rows.append(_row("K2", "toy-kontext", "28 steps, guidance 2.5", int(np.isfinite(bg).sum()),
                     "mean bg_psnr vs source (dB)", float(np.nanmean(bg)), ">=", 28.0))
    rows.append(_k4(model, teacher, scale, pairs, reference))
    rows.append(_determinism_row("toy-kontext", lambda: generate(
        model, [pairs[0].instruction], [0], steps=4, guidance=2.5, reference=reference[:1])))
    return rows


def _k4(model: Any, teacher: str | None, scale: float, pairs: Sequence[Any], reference: Tensor) -> GateResult:
    """Distilled g = 2.5 vs the phase-A teacher with true CFG 2.5 (needs the teacher's weights)."""
    if teacher is None:
        return GateResult("K4", "toy-kontext", "distilled g=2.5 vs teacher true-CFG 2.5", 0, "PSNR (dB)", None,
                          ">= 25", None, "teacher weights not given (pass teacher=<phase-A transformer dir>)")
    from diffusers import FluxTransformer2DModel

    from flowcore.metrics import psnr

    n = min(len(pairs), _count(100, scale))
    student = generate(model, [p.instruction for p in pairs[:n]], range(n), steps=28, guidance=2.5,
                       reference=reference[:n])
    teacher_model = model.bind()
    teacher_model.denoiser = FluxTransformer2DModel.from_pretrained(teacher).to(model.device).eval()
    ref_images = generate(teacher_model, [p.instruction for p in pairs[:n]], range(n), steps=28, scale=2.5,
                          guidance=1.0, reference=reference[:n])
    value = float(psnr(student, ref_images).mean())
    return _row("K4", "toy-kontext", "distilled g=2.5 vs teacher true-CFG 2.5", n, "PSNR (dB)", value, ">=", 25.0)


def unet_gates(scale: float = 1.0, device: str = "cpu") -> list[GateResult]:
    from flowcore.adapters import ControlInput
    from flowcore.toy import load
    from flowcore.toy.garment_judge import read_mannequin
    from flowcore.toy.render import edge_map, render
    from flowcore.toy.scene import SceneConfig, sample_scene
    from flowcore.toy.tryon import sample_mannequin

    model = load("toy-unet", device=device, controlnet=True).adapter()
    n = _count(200, scale)
    captions, one = s1_captions(n)
    images = generate(model, captions, range(n), steps=50, scale=7.5)
    rows = _alignment_rows("U1", "toy-unet", "DDIM 50, CFG 7.5", images, captions, one, {"alignment": 0.85})
    people = [sample_mannequin(0, i, "test") for i in range(n)]
    imgs = generate(model, [p.caption() for p in people], range(n), steps=50, scale=7.5)
    hits = {"kind": 0, "color": 0, "pattern": 0}
    for reading, person in zip(read_mannequin(imgs), people):
        for key in hits:
            hits[key] += int(reading.garment.matches(person.garment)[key])
    for key, thr in (("kind", 0.85), ("color", 0.85), ("pattern", 0.70)):
        rows.append(_row("U2", "toy-unet", "mannequin captions", n, f"garment {key}", hits[key] / n, ">=", thr))
    # U3: ControlNet at scale 1 with ground-truth edges
    scenes = [sample_scene(0, i, "test", SceneConfig(n_objects=1 if one[i] else 2)) for i in range(n)]
    edges = edge_map(render(scenes)).to(model.device)
    ctrl = generate(model, captions, range(n), steps=50, scale=7.5,
                    control=lambda rows: ControlInput(image=edges[rows], scale=1.0))
    rows.append(_row("U3", "toy-unet", "+ ControlNet, GT edges", n, "edge F1 (1-px tolerance)",
                     _edge_f1(edge_map(ctrl), edges.cpu()), ">=", 0.75))
    rows += _alignment_rows("U3", "toy-unet", "+ ControlNet, GT edges", ctrl, captions, one, {"alignment": 0.85})
    # U4: IP-Adapter at scale 1 with empty text
    prompts_img = render([sample_scene(1, i, "test") for i in range(n)])
    ip_model = load("toy-unet", device=device, ip_adapter=True).adapter()
    embeds = ip_model.encode_ip_image(prompts_img.to(ip_model.device))
    ip = generate(ip_model, [""] * n, range(n), steps=50, scale=7.5, image_embeds=embeds)
    from flowcore.toy.judge import alignment

    agree = np.mean([r.score for r in alignment(ip, [sample_scene(1, i, "test").caption("full") for i in range(n)])])
    rows.append(_row("U4", "toy-unet", "+ IP-Adapter, empty text", n, "attribute agreement", agree, ">=", 0.80))
    rows.append(_determinism_row("toy-unet", lambda: generate(model, captions[:2], [0, 1], steps=4, scale=7.5)))
    return rows


def _edge_f1(pred: Tensor, truth: Tensor) -> float:
    """Edge F1 with a 1-px tolerance: a predicted (true) edge pixel counts if a true (predicted) one lies within
    its 3×3 neighbourhood."""
    p, t = pred[:, :1] > 0.5, truth[:, :1] > 0.5
    grow = lambda m: torch.nn.functional.max_pool2d(m.float(), 3, 1, 1) > 0  # noqa: E731
    precision = (p & grow(t)).sum() / p.sum().clamp(min=1)
    recall = (t & grow(p)).sum() / t.sum().clamp(min=1)
    return float(2 * precision * recall / (precision + recall).clamp(min=1e-12))


def _determinism_row(name: str, run: Callable[[], Tensor]) -> GateResult:
    same = bool(torch.equal(run(), run()))
    return GateResult("D1", name, "same seed twice, CPU", 2, "bit-identical", float(same), "= 1", same)


def weights_gates() -> list[GateResult]:
    from flowcore.toy.bundle import weights_root

    root = weights_root()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return [_row("Z1", "weights", "shipped weights folder (weights/)", 1, "total size (MB)", total / 1e6, "<=", 25.0)]


GATE_MODELS: dict[str, Callable[..., list[GateResult]]] = {
    "world": lambda scale=1.0, device="cpu", **_: world_gates(scale),
    "toy-clip": lambda scale=1.0, device="cpu", **_: clip_gates(scale, device),
    "toy-sd3": lambda scale=1.0, device="cpu", **_: sd3_gates(scale, device),
    "toy-kontext": lambda scale=1.0, device="cpu", teacher=None, **_: kontext_gates(scale, device, teacher),
    "toy-flux": lambda scale=1.0, device="cpu", **_: flux_gates(scale, device),
    "toy-unet": lambda scale=1.0, device="cpu", **_: unet_gates(scale, device),
    "weights": lambda **_: weights_gates(),
}


def evaluate(name: str, n: int | None = None, *, scale: float | None = None, device: str = "cpu",
             teacher: str | None = None) -> list[dict]:
    """Run the §9 gates of ``name`` and return their rows as dicts.

    Args:
        name: a toy model name, ``"world"`` or ``"weights"``.
        n: shorthand for a scale: the gates' sample counts are multiplied by ``n / 200``.
        scale: sample-count multiplier (1.0 = the spec's counts; the gates only count as PASS at 1.0).
        teacher: toy-kontext's phase-A transformer folder, for K4.
    """
    if name not in GATE_MODELS:
        raise ValueError(f"no gates for {name!r}; choose from {sorted(GATE_MODELS)}")
    if scale is None:
        scale = 1.0 if n is None else n / 200
    torch.set_grad_enabled(False)
    rows = GATE_MODELS[name](scale=scale, device=device, teacher=teacher)
    if scale != 1.0:
        for r in rows:
            if r.passed is not None:
                r.note = (r.note + "; " if r.note else "") + f"reduced counts (scale {scale:g}): indicative only"
    return [r.to_dict() for r in rows]


def record(name: str, rows: Sequence[dict]) -> None:
    """Merge gate rows into the weights manifest: a model's rows into its weights entry (toy-flux's into
    toy-kontext's, whose weights it uses), the world's and the weights' rows at the top level. Rows replace earlier
    rows with the same (id, setting, metric)."""
    from flowcore.io import write_json
    from flowcore.toy.bundle import MANIFEST_NAME, WEIGHTS_FOLDER, weights_root

    path = weights_root() / MANIFEST_NAME
    data = json.loads(path.read_text())
    if name in WEIGHTS_FOLDER:
        entry = data["models"].get(WEIGHTS_FOLDER[name])
        if entry is None:
            raise ValueError(f"the manifest has no entry for {WEIGHTS_FOLDER[name]}; export its weights first")
    else:
        entry = data.setdefault("world_gates" if name == "world" else "weights_gates", {})
    key = lambda r: (r["id"], r["setting"], r["metric"])  # noqa: E731
    merged = {key(r): r for r in (entry.get("gates") or [])}
    merged.update({key(r): dict(r) for r in rows})
    entry["gates"] = list(merged.values())
    write_json(path, data)


def _format(rows: Sequence[dict]) -> str:
    lines = [f"{'id':4} {'model':12} {'setting':40} {'n':>5} {'metric':32} {'value':>9} {'threshold':>10} result"]
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        result = {True: "PASS", False: "FAIL", None: "SKIP"}[r["passed"]]
        lines.append(f"{r['id']:4} {r['model']:12} {r['setting'][:40]:40} {r['n']:>5} {r['metric'][:32]:32} "
                     f"{value:>9} {r['threshold']:>10} {result}" + (f"  ({r['note']})" if r["note"] else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowcore.toy evaluate``: print (and optionally write) the §9 gate table."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m flowcore.toy evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=[*sorted(GATE_MODELS), "all"],
                        help="gates to run (repeatable; 'all' = every model, the world and the weights)")
    parser.add_argument("--n-scale", type=float, default=1.0,
                        help="multiply every gate's sample count (1.0 = the spec's counts; only 1.0 counts as a pass)")
    parser.add_argument("--device", default="cpu", help="device for sampling (gates are defined on CPU, fp32)")
    parser.add_argument("--teacher", default=None, help="toy-kontext phase-A transformer folder, for gate K4")
    parser.add_argument("--record", action="store_true",
                        help="write the measured rows into weights/MANIFEST.json (the model's entry; world and "
                             "weights gates at the top level)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="machine-readable rows: on stdout without PATH, atomically to PATH with one")
    args = parser.parse_args(argv)
    names = args.model or ["all"]
    if "all" in names:
        names = list(GATE_MODELS)
    rows: list[dict] = []
    for name in names:
        print(f"# gates of {name} ...", file=sys.stderr, flush=True)
        measured = evaluate(name, scale=args.n_scale, device=args.device, teacher=args.teacher)
        if args.record:
            record(name, measured)
        rows += measured
    human = _format(rows)
    if args.json == "-":
        import json

        from flowcore.io import to_jsonable

        print(human, file=sys.stderr)
        print(json.dumps(to_jsonable({"gates": rows}), indent=2))
    else:
        print(human)
        if args.json is not None:
            from flowcore.io import write_json

            write_json(args.json, {"gates": rows})
            print(f"wrote {args.json}")
    return 0 if all(r["passed"] is not False for r in rows) else 1
