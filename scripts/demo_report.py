#!/usr/bin/env python
"""The main job: every method's toy-world demo, gathered into one HTML report.

    python scripts/demo_report.py --output-dir demo-output            # all five methods + the core (≈10 min, CPU)
    python scripts/demo_report.py --only core --output-dir /tmp/r      # the core's own demo only (seconds)

For each method package it runs ``<package> demo --quick`` (no training: committed toy weights and assets) into
``<output-dir>/<package>/`` and collects what the demo wrote: its tables (``*.md``), its pictures (``*.png``,
upscaled with nearest-neighbour so 32×32 images are visible) and its JSON summary. The core section samples every
toy model through flowcore's adapters and shows the toy world (edit pairs, style filters, try-on) and the toy
models' quality gates from the weights manifest. ``index.html`` links everything with relative paths and marks
itself ``ok`` in its title once every picture has loaded (the browser test reads that).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = {  # package -> (command, what it shows)
    "directedit": ("directedit", "Step-exact inversion and dual-path editing vs naive Euler (toy-sd3, toy-flux)."),
    "specedit": ("specedit", "Draft-and-verify dynamic resolution vs the full 50-step baseline (toy-kontext)."),
    "t5-linearize": ("t5-linearize", "Linearized (TTT) toy-sd3 vs the fine-tuned softmax model."),
    "style-attr": ("style-attr", "Continuous style sliders: λ sweeps of the outline attribute (toy-sd3)."),
    "feat-tryon": ("feat-tryon", "Try-on from a design image: FEAT vs ControlNet + image prompt (toy-unet)."),
}
UPSCALE = 4
PIXELATED = "image-rendering: pixelated; image-rendering: crisp-edges;"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- running the demos -------------------------------------------------------------------------------------------
def run_method(name: str, out: Path, timeout: float) -> dict[str, Any]:
    exe = shutil.which(METHODS[name][0])
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    if exe is None:
        return {"name": name, "status": "not installed", "wall_s": 0.0, "command": ""}
    cmd = [exe, "demo", "--quick", "--output-dir", str(folder), "--json", str(folder / "summary.json")]
    log(f"{name}: {' '.join(cmd[1:])}")
    t0 = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLOWCORE_NO_PROGRESS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-3000:]).strip()
    except subprocess.TimeoutExpired:
        status, tail = f"timeout after {timeout:.0f} s", ""
    wall = time.time() - t0
    (folder / "demo.log").write_text(tail + "\n")
    log(f"{name}: {status} in {wall:.0f} s")
    return {"name": name, "status": status, "wall_s": round(wall, 1), "command": " ".join(["<pkg>", *cmd[1:]])}


def core_demo(out: Path, n: int = 6, step_div: int = 1) -> dict[str, Any]:
    """Samples of every toy model through flowcore's adapters, and the toy world itself (``n`` per row; sampling
    steps divided by ``step_div`` for a fast smoke run)."""
    import torch

    from flowcore.io import save_result
    from flowcore.toy import (
        apply_style,
        available,
        load,
        make_tryon_sample,
        manifest,
        render,
        sample_edit,
        sample_scene,
    )
    from flowcore.toy.gates import generate

    folder = out / "core"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    scenes = [sample_scene(0, i, "test") for i in range(n)]
    captions = [s.caption("full") for s in scenes]
    rows = {"ground truth": render(scenes)}
    models = [m for m in ("toy-sd3", "toy-flux", "toy-unet") if m in available()]
    settings = {"toy-sd3": dict(steps=28 // step_div, scale=5.0), "toy-flux": dict(steps=28 // step_div, guidance=3.5),
                "toy-unet": dict(steps=50 // step_div, scale=7.5)}
    for name in models:
        try:
            rows[name] = generate(load(name).adapter(), captions, range(n), **settings[name])
        except Exception as exc:  # missing weights: the report says so instead of failing
            log(f"core: {name} skipped ({type(exc).__name__}: {exc})")
    pairs = [sample_edit(0, i, "test") for i in range(n)]
    edit_rows = {"source": render([p.source for p in pairs]), "target (exact)": render([p.target for p in pairs])}
    try:
        kontext = load("toy-kontext").adapter()
        ref = kontext.encode_image(edit_rows["source"])
        edit_rows["toy-kontext edit"] = generate(kontext, [p.instruction for p in pairs], range(n), steps=28 // step_div,
                                                 guidance=2.5, reference=ref)
    except Exception as exc:
        log(f"core: toy-kontext skipped ({type(exc).__name__}: {exc})")
    base = render(scenes[:1])
    style_rows = {f: torch.cat([apply_style(base, f, lam) for lam in (0.0, 0.4, 0.8, 1.2)])
                  for f in ("outline", "contrast", "watercolor", "pattern")}
    tryon = [make_tryon_sample(0, i, "test") for i in range(n)]
    tryon_rows = {"person": torch.stack([t.person_image for t in tryon]),
                  "design": torch.stack([t.design_image for t in tryon]),
                  "target (exact)": torch.stack([t.target_image for t in tryon])}
    figures = []
    for title, stem, grid_rows, note in (
        ("Text-to-image with every toy model", "t2i", rows, "; ".join(captions)),
        ("Instruction edits (toy world pairs)", "edits", edit_rows, "; ".join(p.instruction for p in pairs)),
        ("Style filters at λ = 0, 0.4, 0.8, 1.2", "styles", style_rows, ""),
        ("Try-on world: person, design, exact target", "tryon", tryon_rows, ""),
    ):
        grid = _grid(grid_rows)
        save_result(folder / stem, grid, {"model": "toy", "world": "toy", "rows": list(grid_rows), "note": note})
        figures.append({"title": title, "png": f"core/{stem}.png", "rows": list(grid_rows), "note": note})
    gates = []
    for model, entry in sorted(manifest().get("models", {}).items()):
        for gate in entry.get("gates") or []:
            gates.append({"model": model, **gate})
    return {"figures": figures, "gates": gates, "wall_s": round(time.time() - t0, 1),
            "models": {m: manifest().get("models", {}).get(m, {}).get("steps") for m in available()}}


def _grid(rows: dict[str, Any]) -> Any:
    import torch

    width = max(r.shape[0] for r in rows.values())
    lines = []
    for r in rows.values():
        r = r.float().clamp(0, 1)
        if r.shape[0] < width:
            r = torch.cat([r, torch.ones(width - r.shape[0], *r.shape[1:])])
        lines.append(torch.cat(list(r), dim=-1))
    grid = torch.cat(lines, dim=-2)
    return torch.nn.functional.interpolate(grid[None], scale_factor=UPSCALE, mode="nearest")[0]


# --- HTML --------------------------------------------------------------------------------------------------------
def md_to_html(text: str) -> str:
    """Headings, paragraphs and pipe tables of the demos' markdown, escaped."""
    out, table = [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|?[\s:\-|]+\|?", r)]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(6, len(line) - len(line.lstrip("#")) + 2)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def upscale_pngs(folder: Path) -> list[Path]:
    """Pictures of one demo, small ones upscaled ×UPSCALE with nearest-neighbour (originals kept)."""
    from PIL import Image

    pictures = []
    for png in sorted(folder.rglob("*.png")):
        if png.name.endswith(".x4.png"):
            continue
        with Image.open(png) as im:
            if max(im.size) < 256:
                big = png.with_name(png.stem + ".x4.png")
                im.resize((im.width * UPSCALE, im.height * UPSCALE), Image.NEAREST).save(big)
                png = big
        pictures.append(png)
    return pictures


def write_html(out: Path, runs: list[dict[str, Any]], core: dict[str, Any] | None, info: dict[str, Any]) -> Path:
    parts = [f"<h1>flowcore monorepo — toy-world demo report</h1><p class=meta>{html.escape(info['when'])} · "
             f"{html.escape(info['device'])} · total {info['wall_s']:.0f} s</p>",
             "<p>Every number here comes from the embedded toy world (32×32 procedural images, exact ground truth, "
             "small trained models). They show the methods work; they are not results for real checkpoints.</p>"]
    nav = ["<a href='#core'>core</a>"] + [f"<a href='#{r['name']}'>{r['name']}</a>" for r in runs]
    parts.append("<nav>" + " · ".join(nav) + "</nav>")
    if core is not None:
        parts.append("<section id=core><h2>flowcore: the toy world and the toy models</h2>")
        for fig in core["figures"]:
            parts.append(f"<figure><img src='{fig['png']}' alt='{html.escape(fig['title'])}'>"
                         f"<figcaption><b>{html.escape(fig['title'])}</b> — rows: "
                         f"{html.escape(', '.join(fig['rows']))}. {html.escape(fig['note'])}</figcaption></figure>")
        if core["gates"]:
            head = "<tr><th>model</th><th>gate</th><th>metric</th><th>value</th><th>threshold</th><th>result</th></tr>"
            body = "".join(
                f"<tr><td>{html.escape(str(g.get('model')))}</td><td>{html.escape(str(g.get('id')))}</td>"
                f"<td>{html.escape(str(g.get('metric')))}</td><td>{_fmt(g.get('value'))}</td>"
                f"<td>{html.escape(str(g.get('threshold')))}</td>"
                f"<td>{ {True: 'PASS', False: 'FAIL', None: 'n/a'}.get(g.get('passed'), '?') }</td></tr>"
                for g in core["gates"])
            parts.append(f"<h3>Quality gates of the shipped toy weights (toyworld §9)</h3><table>{head}{body}</table>")
        parts.append(f"<p class=meta>core demo: {core['wall_s']:.0f} s</p></section>")
    for run in runs:
        name, folder = run["name"], out / run["name"]
        parts.append(f"<section id='{name}'><h2>{name}</h2><p>{html.escape(METHODS[name][1])}</p>")
        parts.append(f"<p class=meta>status: <b>{html.escape(run['status'])}</b> · {run['wall_s']:.0f} s · "
                     f"<code>{html.escape(run['command'])}</code></p>")
        for md in sorted(folder.rglob("*.md")):
            parts.append(f"<div class=table>{md_to_html(md.read_text(errors='replace'))}</div>")
        for png in upscale_pngs(folder):
            rel = png.relative_to(out).as_posix()
            parts.append(f"<figure><img src='{rel}' alt='{html.escape(png.stem)}'>"
                         f"<figcaption>{html.escape(png.relative_to(folder).as_posix())}</figcaption></figure>")
        log_file = folder / "demo.log"
        if run["status"] != "ok" and log_file.exists():
            parts.append(f"<pre>{html.escape(log_file.read_text()[-2000:])}</pre>")
        parts.append("</section>")
    parts.append(f"<h2>Versions</h2><pre>{html.escape(json.dumps(info['versions'], indent=2))}</pre>")
    style = (f"body{{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}} img{{{PIXELATED}"
             "max-width:100%;border:1px solid #ccc}} table{border-collapse:collapse;margin:.5em 0;font-size:90%}"
             "td,th{border:1px solid #bbb;padding:2px 6px} .meta{color:#666} figure{margin:1em 0}"
             "pre{background:#f4f4f4;padding:.5em;overflow:auto}")
    check = ("window.addEventListener('load',()=>{const imgs=[...document.images];"
             "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0));"
             "document.title=(bad.length?'broken '+bad.length:'ok')+' '+imgs.length+' images';"
             "document.body.dataset.images=imgs.length;document.body.dataset.broken=bad.length;});")
    doc = (f"<!doctype html><html><head><meta charset=utf-8><title>loading</title><style>{style}</style>"
           f"<script>{check}</script></head><body>{''.join(parts)}</body></html>")
    from flowcore.io import atomic_write

    return atomic_write(out / "index.html", doc)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="demo-output", help="report folder (index.html + one folder per part)")
    parser.add_argument("--only", action="append", choices=["core", *METHODS],
                        help="run only these parts (repeatable; default: the core and all five methods)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per method demo")
    parser.add_argument("--smoke", action="store_true",
                        help="core section only as a fast smoke run: 3 samples per row, a quarter of the steps")
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["core", *METHODS]
    t0 = time.time()
    core = None
    if "core" in parts:
        log("core: toy world and toy models")
        core = core_demo(out, n=3, step_div=4) if args.smoke else core_demo(out)
        log(f"core: done in {core['wall_s']:.0f} s")
    runs = [run_method(name, out, args.timeout) for name in METHODS if name in parts]
    from flowcore.bench import device_info
    from flowcore.io import package_versions, write_json

    info = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": time.time() - t0,
            "device": str(device_info().get("device", "")),
            "versions": package_versions("flowcore", "flowkernels", *METHODS, "torch", "diffusers")}
    index = write_html(out, runs, core, info)
    write_json(out / "report.json", {"runs": runs, "core": core, **info})
    failed = [r["name"] for r in runs if r["status"] != "ok"]
    log(f"wrote {index} in {time.time() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
