#!/usr/bin/env python
"""The README's picture strip: one picture per method from a demo report, side by side with a caption each.

    python scripts/demo_strip.py demo-output docs/demo-strip.png

Reads the pictures that ``scripts/demo_report.py`` collected (``<report>/<package>/**/*.png``, originals, not the
×4 copies), takes the first one of each package in the order below (or the file named by ``--pick
PACKAGE=RELATIVE/PATH.png``), scales each with nearest-neighbour to a common height and writes one PNG atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PACKAGES = ("directedit", "specedit", "t5-linearize", "style-attr", "feat-tryon")
CAPTION_HEIGHT = 18


def pick_pictures(report: Path, picks: dict[str, str]) -> list[tuple[str, Path]]:
    chosen = []
    for name in PACKAGES:
        folder = report / name
        if name in picks:
            path = folder / picks[name]
            if not path.is_file():
                raise FileNotFoundError(f"--pick {name}={picks[name]}: no such picture in {folder}")
        else:
            pngs = sorted(p for p in folder.rglob("*.png") if not p.name.endswith(".x4.png"))
            if not pngs:
                continue
            path = pngs[0]
        chosen.append((name, path))
    if not chosen:
        raise FileNotFoundError(f"{report} holds no method pictures; run `python scripts/demo_report.py` first")
    return chosen


def compose(pictures: list[tuple[str, Path]], height: int, gap: int = 8):
    from PIL import Image, ImageDraw

    tiles = []
    for name, path in pictures:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = max(1, round(height / im.height))
            tile = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
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
    parser.add_argument("--pick", action="append", default=[], metavar="PACKAGE=PATH",
                        help="use this picture (relative to the package folder) instead of the first one")
    args = parser.parse_args(argv)
    picks = {}
    for item in args.pick:
        name, sep, rel = item.partition("=")
        if not sep or name not in PACKAGES:
            parser.error(f"--pick wants PACKAGE=PATH with PACKAGE one of {', '.join(PACKAGES)}; got {item!r}")
        picks[name] = rel
    from flowcore.io import atomic_write

    strip = compose(pick_pictures(args.report, picks), args.height)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.output, lambda tmp: strip.save(tmp, format="PNG"))
    print(f"wrote {args.output} ({strip.width}×{strip.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
