#!/usr/bin/env python
"""The README's picture strip: one picture per method from a demo report, side by side with a caption each.

    python scripts/demo_strip.py demo-output docs/demo-strip.png

Reads the pictures that ``scripts/demo_report.py`` collected (``<report>/<package>/**/*.png``, originals, not the
×4 copies), takes the first one of each package in the order below (or the file named by ``--pick
PACKAGE=RELATIVE/PATH.png``), keeps its first ``--crop`` pixel rows, scales each with nearest-neighbour to a common
height and writes one PNG atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGES = ("directedit", "specedit", "t5-linearize", "style-attr", "feat-tryon")
CAPTION_HEIGHT = 18


def pick_pictures(report: Path, picks: dict[str, str]) -> list[tuple[str, Path, int | None]]:
    """``(package, picture, rows to keep or None)`` per package; a pick may end in ``:ROWS``."""
    chosen: list[tuple[str, Path, int | None]] = []
    for name in PACKAGES:
        folder = report / name
        rows = None
        if name in picks:
            rel, _, rows_text = picks[name].partition(":")
            rows = int(rows_text) if rows_text else None
            path = folder / rel
            if not path.is_file():
                raise FileNotFoundError(f"--pick {name}={picks[name]}: no such picture in {folder}")
        else:
            pngs = sorted(p for p in folder.rglob("*.png") if not p.name.endswith(".x4.png"))
            if not pngs:
                continue
            path = pngs[0]
        chosen.append((name, path, rows))
    if not chosen:
        raise FileNotFoundError(f"{report} holds no method pictures; run `python scripts/demo_report.py` first")
    return chosen


def compose(pictures: list[tuple[str, Path, int | None]], height: int, crop: int, gap: int = 8):
    from PIL import Image, ImageDraw

    tiles = []
    for name, path, rows in pictures:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im = im.crop((0, 0, im.width, min(im.height, rows or crop)))  # the first rows of a tall grid
            tile = im.resize((round(im.width * height / im.height), height), Image.NEAREST)
        tiles.append((name, tile))
    width = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
    tallest = max(t.height for _, t in tiles)
    strip = Image.new("RGB", (width, tallest + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for name, tile in tiles:
        strip.paste(tile, (x, CAPTION_HEIGHT))
        draw.text((x + 2, 3), name, fill="black")
        x += tile.width + gap
    return strip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the demo report folder (scripts/demo_report.py --output-dir)")
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--height", type=int, default=256, help="target height of each picture in pixels")
    parser.add_argument("--crop", type=int, default=96,
                        help="keep at most this many source pixel rows of each picture (the first grid rows)")
    parser.add_argument("--pick", action="append", default=[], metavar="PACKAGE=PATH[:ROWS]",
                        help="use this picture (relative to the package folder) instead of the first one; "
                             "PATH:ROWS also overrides --crop for it")
    args = parser.parse_args(argv)
    picks = {}
    for item in args.pick:
        name, sep, rel = item.partition("=")
        if not sep or name not in PACKAGES:
            parser.error(f"--pick wants PACKAGE=PATH with PACKAGE one of {', '.join(PACKAGES)}; got {item!r}")
        picks[name] = rel
    from flowcore.io import atomic_write

    strip = compose(pick_pictures(args.report, picks), args.height, args.crop)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: strip.save(tmp, format="PNG"))
    print(f"wrote {args.output} ({strip.width}×{strip.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
