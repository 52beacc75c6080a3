"""Fixed vocabulary of the toy world (toyworld.md §2.2, §2.3, §5, §7).

Everything here is a constant: palette, shapes, sizes, grid cells, edit kinds, filter names, garment
vocabulary and the 56-word text vocabulary. Other toy modules import from here so there is one source.
"""

from __future__ import annotations

# --- palette (§2.2): sRGB 0..255 ----------------------------------------------------------------------
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "orange": (250, 150, 20),
    "yellow": (245, 230, 60),
    "green": (35, 150, 55),
    "blue": (30, 100, 235),
    "purple": (160, 50, 170),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

# Fixed colours outside the palette (never named in captions).
SKIN = (224, 186, 150)
TROUSERS = (70, 80, 110)
SHOES = (40, 40, 40)
INK = (13, 13, 18)
PURE_WHITE = (255, 255, 255)  # the "white image" w of FEAT and the garment-on-white canvas

# --- shapes, sizes, positions (§2.3) --------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SHAPE_AREA_FRACTION: dict[str, float] = {
    "circle": 3.141592653589793 / 4,
    "square": 1.0,
    "triangle": 0.5,
    "diamond": 0.5,
    "cross": 5 / 9,
}
SIZES: dict[str, float] = {"small": 0.16, "medium": 0.22, "large": 0.28}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

# 3×3 grid, row-major; index = row * 3 + col. Centre of cell = ((col+0.5)/3, (row+0.5)/3).
POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)

GRADIENT_TARGETS: tuple[str, ...] = ("white", "black")

# --- edits (§3), styles (§4) ----------------------------------------------------------------------------
EDIT_KINDS: tuple[str, ...] = ("color", "shape", "size", "position", "background", "add", "remove")
STYLE_FILTERS: tuple[str, ...] = ("outline", "contrast", "watercolor", "pattern")
WATERCOLOR_COMPONENTS: tuple[str, ...] = ("wobble", "edge_darkening", "granulation", "splatter")
PATTERN_VARIANTS: tuple[str, ...] = ("hatch", "stripes", "halftone")

# --- try-on world (§5) ----------------------------------------------------------------------------------
GARMENT_KINDS: tuple[str, ...] = ("t-shirt", "sweater", "tank-top", "dress")
GARMENT_PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
DESIGN_KINDS: tuple[str, ...] = ("swatch", "tile", "scene")
PARSING_LABELS: dict[str, int] = {
    "background": 0, "skin": 1, "garment": 2, "trousers": 3, "shoes": 4, "hat": 5, "bag": 6,
}

# --- text vocabulary (§7): 56 words, ids 56..63 reserved --------------------------------------------------
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
FUNCTION_WORDS: tuple[str, ...] = ("a", "an", "and", "on", "in", "the", "to", "into", "with", "background")
POSITION_WORDS: tuple[str, ...] = ("top", "middle", "bottom", "left", "center", "right")
EDIT_VERBS: tuple[str, ...] = ("make", "turn", "move", "change", "add", "remove")
TRYON_WORDS: tuple[str, ...] = (
    "mannequin", "wearing", "t-shirt", "sweater", "tank-top", "dress", "hat", "bag",
    "striped", "dotted", "checkered", "plain", "pattern", "swatch",
)
VOCAB: tuple[str, ...] = (
    SPECIAL_TOKENS + FUNCTION_WORDS + COLORS + SHAPES + SIZE_NAMES + POSITION_WORDS + EDIT_VERBS + TRYON_WORDS
)
VOCAB_SIZE = 64  # 56 words + 8 reserved ids
MAX_TOKENS = 32  # [BOS] + up to 30 words + [EOS], padded
WORD_ALIASES: dict[str, str] = {"centre": "center", "tshirt": "t-shirt"}

assert len(VOCAB) == 56, len(VOCAB)
assert len(set(VOCAB)) == 56
