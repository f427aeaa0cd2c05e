"""The procedural world of the synthetic tier (v2): 32×32 scenes of one or two patterned objects on a named
background.

Everything is a pure function of a :class:`Scene` and a seed, so the world, its captions and its exact checks
are reproducible::

    scene = Scene(shape="ball", fill="red", pattern="stripes", pattern_color="blue", position="left",
                  background="gray")
    pixels = render(scene, seed=0)          # uint8 (32, 32, 3)
    caption(scene)                          # "a large red ball with blue stripes on the left, on a gray background"

v2 silhouettes are chosen so that classes still differ after the blur that high noise leaves (a disc, a thin
annulus, a flat brick, a tall diamond, a dome): v1's similar blobs differed in a few edge pixels, and its base
model drew one blob for every class word (``docs/findings/synth10-world-v2.md``). Personal concepts add an
identity *mark* (a small dot at a fixed place inside the object) and a fixed fill / pattern combination that
pretraining never shows; personal styles are palette remaps plus a texture that pretraining never shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

VERSION = "v2"  # recorded in the weights manifest: weights pretrained on another world version do not fit
SIZE = 32

COLORS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225), "yellow": (240, 215, 40),
    "purple": (145, 55, 200), "orange": (245, 135, 25), "cyan": (40, 205, 215), "pink": (245, 130, 190),
}
BACKGROUNDS = {  # name -> mean colour; grass and water are textured
    "black": (10, 10, 10), "gray": (125, 125, 125), "white": (240, 240, 240), "brown": (105, 65, 35),
    "grass": (55, 120, 45), "water": (40, 80, 150),
}
SHAPES = ("ball", "box", "ring", "kite", "dome")
PATTERNS = ("solid", "stripes", "dots", "checker", "zigzag")
POSITIONS = {"center": (16, 16), "left": (16, 9), "right": (16, 23), "top": (9, 16), "bottom": (23, 16)}
#: object radius R per size word; two-object scenes draw both objects small
SIZES = {"small": 5.5, "large": 8.0}
#: a fill this close (RGB distance) to a background's colour is never drawn on it (green on grass): such an
#: object hardly differs from its background, so neither a model nor a check can see its shape
MIN_CONTRAST = 100.0
STYLES = ("plain", "mosaic", "sketch")  # styles the base model learns from words
MARK_CORNERS = {"top-right": (-1, 1), "bottom-left": (1, -1), "top-left": (-1, -1), "bottom-right": (1, 1)}


@dataclass(frozen=True)
class Scene:
    shape: str
    fill: str
    pattern: str = "solid"
    pattern_color: str | None = None
    size: str = "large"
    position: str = "center"
    background: str = "gray"
    style: str = "plain"
    mark: tuple[str, str] | None = None  # (colour, corner): personal identities only
    personal_style: str | None = None  # a key of PERSONAL_STYLES: personal style concepts only


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    dist = np.sqrt(dy**2 + dx**2)
    if shape == "ball":  # a disc
        return dist <= r
    if shape == "box":  # a flat brick, 2.1R × 0.84R
        return (abs(dx) <= r * 1.05) & (abs(dy) <= r * 0.42)
    if shape == "ring":  # a thin hollow annulus
        return (dist <= r) & (dist >= r * 0.6)
    if shape == "kite":  # a tall diamond, 1.24R × 2.2R
        return abs(dx) / (r * 0.62) + abs(dy) / (r * 1.1) <= 1.0
    if shape == "dome":  # a half-disc on a flat base, centred on its area
        by = dy - r * 0.35
        return ((by <= 0) & (np.sqrt(by**2 + dx**2) <= r)) | ((by > 0) & (by <= r * 0.3) & (abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


#: where a personal identity's mark sits, as fractions of R along (y, x) per corner sign: always inside the
#: silhouette (the brick is flat, the diamond narrow, the ring hollow in the middle)
MARK_OFFSETS = {"ball": (0.45, 0.45), "box": (0.0, 0.6), "ring": (0.55, 0.55), "kite": (0.45, 0.0),
                "dome": (0.0, 0.5)}


def shape_mask(shape: str, center: tuple[int, int], size: str) -> np.ndarray:
    """The silhouette of a ``shape`` of ``size`` whose centre is ``center`` (boolean 32×32)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return _shape_mask(shape, (yy - center[0]).astype(np.float32), (xx - center[1]).astype(np.float32), SIZES[size])


def mark_box(shape: str, center: tuple[int, int], size: str, corner: str) -> tuple[int, int]:
    """Top-left pixel (y, x) of the 2×2 identity mark, centred on its offset from the object's centre."""
    sy, sx = MARK_CORNERS[corner]
    fy, fx = MARK_OFFSETS[shape]
    r = SIZES[size]
    return center[0] + int(round(sy * r * fy)) - 1, center[1] + int(round(sx * r * fx)) - 1


def low_contrast(fill: str, background: str) -> bool:
    return float(np.linalg.norm(np.subtract(COLORS[fill], BACKGROUNDS[background]))) < MIN_CONTRAST


def _pattern_mask(pattern: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if pattern == "solid":
        return np.zeros_like(yy, dtype=bool)
    if pattern == "stripes":
        return (yy // 2) % 2 == 0
    if pattern == "dots":
        return (yy % 3 == 0) & (xx % 3 == 0)
    if pattern == "checker":
        return (yy // 2 + xx // 2) % 2 == 0
    if pattern == "zigzag":
        return ((xx + np.abs((yy % 6) - 3)) // 2) % 3 == 0
    raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    img = np.broadcast_to(base, (SIZE, SIZE, 3)).copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if name == "grass":  # vertical blades
        img += ((xx + rng.integers(0, 3)) % 3 == 0)[..., None] * np.array([-20, 35, -10])
    elif name == "water":  # horizontal waves
        img += (np.sin(yy * 1.2 + xx * 0.3 + rng.uniform(0, 6)) > 0.6)[..., None] * np.array([25, 40, 60])
    return img


def _style(img: np.ndarray, style: str, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if style == "plain":
        return img
    if style == "mosaic":
        blocks = img.reshape(SIZE // 4, 4, SIZE // 4, 4, 3).mean(axis=(1, 3))
        return np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    if style == "sketch":  # grey pencil outline of the object on a grey version of the background
        inner = mask.copy()
        inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        edge = mask & ~inner
        grey = background.mean(axis=-1, keepdims=True).repeat(3, axis=-1)
        ink = 20.0 if grey.mean() > 90 else 230.0
        grey[edge] = ink
        return grey
    raise ValueError(f"unknown style {style!r}; known: {STYLES}")


def _personal_style(img: np.ndarray, name: str) -> np.ndarray:
    """Personal styles: a palette remap plus a texture that no pretraining image has."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    if name == "neon":  # rotated channels, brightened, dark scanlines every third row
        out = img[..., [2, 0, 1]] * 0.8 + 50
        out[yy % 3 == 0] *= 0.35
    elif name == "sepia":  # sepia tone with a diagonal hatch
        lum = img.mean(axis=-1, keepdims=True)
        out = lum * np.array([1.15, 0.9, 0.6])
        out[(xx + yy) % 4 == 0] *= 0.55
    elif name == "poster":  # two levels per channel, swapped red/green, bright grid
        out = np.where(img > 110, 235.0, 25.0)[..., [1, 0, 2]]
        out[(yy % 8 == 0) | (xx % 8 == 0)] = (250, 250, 120)
    else:
        raise ValueError(f"unknown personal style {name!r}; known: {sorted(PERSONAL_STYLES)}")
    return out


PERSONAL_STYLES = {"neon": "neon", "sepia": "sepia", "poster": "poster"}


def object_center(scene: Scene, rng: np.random.Generator) -> tuple[int, int]:
    """The object's anchor plus ±1 px jitter (drawn from ``rng``)."""
    cy, cx = POSITIONS[scene.position]
    return cy + int(rng.integers(-1, 2)), cx + int(rng.integers(-1, 2))


def _draw_object(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Paint the object of ``scene`` into ``img``; returns its mask."""
    cy, cx = object_center(scene, rng)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    mask = shape_mask(scene.shape, (cy, cx), scene.size)
    if scene.fill not in COLORS or (scene.pattern != "solid" and scene.pattern_color not in COLORS):
        raise ValueError(f"fill {scene.fill!r} / pattern_color {scene.pattern_color!r} of {scene}: the fill, and the "
                         f"pattern colour of a patterned object, must be colours of the world: {list(COLORS)}")
    img[mask] = COLORS[scene.fill]
    if scene.pattern != "solid":
        img[mask & _pattern_mask(scene.pattern, yy - cy, xx - cx)] = COLORS[scene.pattern_color]
    if scene.mark is not None:
        colour, corner = scene.mark
        my, mx = mark_box(scene.shape, (cy, cx), scene.size, corner)
        img[my : my + 2, mx : mx + 2] = COLORS[colour] if colour in COLORS else BACKGROUNDS[colour]
    return mask


def grain(pixels: np.ndarray, rng: np.random.Generator, sigma: float = 10.0) -> np.ndarray:
    """The pixel grain the base model's samples show (Gaussian, σ ≈ 10 grey levels): what the scorer is trained
    to see through and what the oracles are checked against."""
    return np.clip(pixels + rng.normal(0.0, sigma, pixels.shape), 0, 255).round().astype(np.uint8)


def render(scene: Scene, seed: int = 0) -> np.ndarray:
    """Draw ``scene`` with a little seeded jitter (±1 px position, background texture phase)."""
    return render_many([scene], seed)


def render_many(scenes: list[Scene], seed: int = 0) -> np.ndarray:
    """Several objects on the first scene's background, in its style (multi-concept images)."""
    rng = np.random.default_rng(seed)
    first = scenes[0]
    background = _background(first.background, rng)
    img = background.copy()
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    for scene in scenes:
        mask |= _draw_object(img, scene, rng)
    img = _style(img, first.style, background, mask)
    if first.personal_style:
        img = _personal_style(img, first.personal_style)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def caption_many(scenes: list[Scene], rng: np.random.Generator | None = None, keep: float = 1.0,
                 subjects: list[str] | None = None, place_keep: float | None = None) -> str:
    """"a red ball on the left and a blue box on the right, on a gray background"; ``keep`` and ``place_keep``
    as in :func:`caption`, per object (a two-object caption always names both positions)."""
    rng = rng or np.random.default_rng(0)
    subjects = subjects or [None] * len(scenes)
    parts = []
    for scene, subject in zip(scenes, subjects, strict=True):
        text = caption(replace(scene, style="plain"), rng, keep=keep, subject=subject, place_keep=place_keep,
                       keep_position=True)
        parts.append(text.split(", on a ")[0])
    text = " and ".join(parts)
    if keep >= 1.0 or rng.random() < keep:
        text += f", on a {scenes[0].background} background"
    return text


def caption(scene: Scene, rng: np.random.Generator | None = None, keep: float = 1.0, subject: str | None = None,
            place_keep: float | None = None, keep_position: bool = False) -> str:
    """Describe ``scene``; with ``keep`` < 1 each optional attribute is dropped with probability 1 - keep, size
    and position with probability 1 - ``place_keep`` (default: ``keep``)."""
    rng = rng or np.random.default_rng(0)
    place_keep = keep if place_keep is None else place_keep

    def has(p: float = keep) -> bool:
        return p >= 1.0 or rng.random() < p

    if subject is None:
        words = []
        if has(place_keep):
            words.append(scene.size)
        if has():  # evaluation prompts name a bare class word ("a ball on the left"): pretraining must too
            words.append(scene.fill)
        words.append(scene.shape)
        subject = " ".join(words)
        if scene.pattern != "solid" and has():
            subject += f" with {scene.pattern_color} {scene.pattern}"
    text = f"a {subject}"
    if has(place_keep) or keep_position:
        text += f" on the {scene.position}"
    if has():
        text += f", on a {scene.background} background"
    if scene.style != "plain":
        text = f"a {scene.style} of {text}"
    return text


def vocabulary() -> list[str]:
    """Every word the world's captions use."""
    words = {"a", "an", "with", "on", "the", "of", "background", "and", "picture"}
    words |= set(COLORS) | set(BACKGROUNDS) | set(SHAPES) | set(PATTERNS) | set(POSITIONS) | set(SIZES) | set(STYLES)
    return sorted(words)


def random_scene(rng: np.random.Generator, exclude: set[tuple] = frozenset()) -> Scene:
    """A pretraining scene: any class, colours, pattern, place and known style, never a personal identity and
    never a fill that matches its background."""
    while True:
        fill, pcolor = rng.choice(list(COLORS), size=2, replace=False)
        scene = Scene(
            shape=str(rng.choice(SHAPES)), fill=str(fill), pattern=str(rng.choice(PATTERNS)),
            pattern_color=str(pcolor), size=str(rng.choice(list(SIZES))), position=str(rng.choice(list(POSITIONS))),
            background=str(rng.choice(list(BACKGROUNDS))), style=str(rng.choice(STYLES, p=[0.7, 0.15, 0.15])),
        )
        if scene.pattern == "solid":
            scene = replace(scene, pattern_color=None)
        if identity(scene) not in exclude and not low_contrast(scene.fill, scene.background):
            return scene


def identity(scene: Scene) -> tuple:
    """What makes a personal object itself: class, fill, pattern and pattern colour."""
    return (scene.shape, scene.fill, scene.pattern, scene.pattern_color)


# ----------------------------------------------------------------------------------------------------------
# Exact checks, possible only because the world is procedural.

_POSITION_RE = re.compile(r"on the (center|left|right|top|bottom)")
_BACKGROUND_RE = re.compile(r"on an? (\w+) background")
_STYLE_RE = re.compile(r"^an? (mosaic|sketch) of ")


def prompt_context(prompt: str) -> dict[str, str]:
    """The attributes a prompt asks for that can be checked exactly: background, position, style."""
    out = {}
    if m := _POSITION_RE.search(prompt):
        out["position"] = m.group(1)
    if (m := _BACKGROUND_RE.search(prompt)) and m.group(1) in BACKGROUNDS:
        out["background"] = m.group(1)
    if m := _STYLE_RE.search(prompt.strip().lower()):
        out["style"] = m.group(1)
    if " and a" in prompt:  # two objects: their joint centroid says nothing about either position
        out.pop("position", None)
    if out.get("style") == "sketch":  # a sketch greys the whole picture: its background colour is not drawn
        out.pop("background", None)
    return out


def detect_background(img: np.ndarray) -> str:
    """Nearest named background to the median colour of the 2-pixel border."""
    px = np.asarray(img, dtype=np.float32)
    border = np.concatenate([px[:2].reshape(-1, 3), px[-2:].reshape(-1, 3), px[:, :2].reshape(-1, 3),
                             px[:, -2:].reshape(-1, 3)])
    med = np.median(border, axis=0)
    return min(BACKGROUNDS, key=lambda n: float(np.sum((med - np.array(BACKGROUNDS[n])) ** 2)))


def detect_position(img: np.ndarray) -> str | None:
    """Nearest anchor to the centroid of pixels far from the border's median colour (None: nothing drawn)."""
    px = np.asarray(img, dtype=np.float32)
    border = np.concatenate([px[:2].reshape(-1, 3), px[-2:].reshape(-1, 3)])
    diff = np.abs(px - np.median(border, axis=0)).sum(-1)
    fg = diff > max(90.0, float(np.percentile(np.abs(border - np.median(border, axis=0)).sum(-1), 95)) + 40)
    if fg.sum() < 4:
        return None
    ys, xs = np.nonzero(fg)
    cy, cx = ys.mean(), xs.mean()
    return min(POSITIONS, key=lambda n: (POSITIONS[n][0] - cy) ** 2 + (POSITIONS[n][1] - cx) ** 2)


def _median3(px: np.ndarray) -> np.ndarray:
    """3×3 median per channel: removes the isolated pixel noise that sampling leaves, keeps edges and blocks."""
    p = np.pad(px, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = px.shape[:2]
    return np.median(np.stack([p[i : i + h, j : j + w] for i in range(3) for j in range(3)]), axis=0)


def _block_residual(px: np.ndarray, oy: int, ox: int) -> float:
    """Mean squared deviation from the 4×4-block means of a 28×28 window whose grid starts at (oy, ox)."""
    sub = px[oy : oy + 28, ox : ox + 28]
    means = sub.reshape(7, 4, 7, 4, -1).mean(axis=(1, 3))
    return float(((sub - np.repeat(np.repeat(means, 4, axis=0), 4, axis=1)) ** 2).mean())


#: thresholds of :func:`detect_style`, chosen on renders with added Gaussian pixel noise of σ = 10 grey levels
#: (the grain the synthetic base model's samples show) and checked by the tests: a sketch stays below the
#: saturation bound and has almost no strongly coloured pixel, the world's objects lie far above both; a
#: mosaic is flat on its own 4-pixel grid but not on one shifted by 2 pixels
SKETCH_MAX_SATURATION = 42.0
SKETCH_MAX_COLOURED_PIXELS = 12  # pixels of saturation > 80 (raw): a small thin ring or kite has 40 or more
MOSAIC_MAX_GRID_RATIO = 0.45
#: a ratio up to 0.6 still calls a mosaic when the aligned blocks are nearly flat too: v2's flat brick, solid on
#: a solid background, can sit on the grid with all but one edge and reach 0.48-0.6, never that flat
MOSAIC_LOOSE_GRID_RATIO, MOSAIC_MAX_ALIGNED_RESIDUAL = 0.6, 40.0


def detect_style(img: np.ndarray) -> str:
    """sketch: no coloured region; mosaic: flat 4×4 blocks on the world's grid; else plain.

    Both tests run on a 3×3-median-filtered copy, so that the grain a sampler leaves does not decide them (the
    sketch test also counts strongly coloured raw pixels: a thin patterned ring can vanish in the median): a
    mosaic is recognised by its blocks being flatter on their own grid than on a grid shifted by 2 pixels (a
    ratio that pixel noise pushes towards 1, never below it), not by exact flatness.
    """
    raw = np.asarray(img, dtype=np.float32)
    px = _median3(raw)
    saturation = float(np.percentile(px.max(-1) - px.min(-1), 98))
    coloured = int(((raw.max(-1) - raw.min(-1)) > 80).sum())
    if saturation < SKETCH_MAX_SATURATION and coloured < SKETCH_MAX_COLOURED_PIXELS:
        return "sketch"
    aligned = _block_residual(px, 0, 0)
    shifted = float(np.mean([_block_residual(px, 2, 0), _block_residual(px, 0, 2), _block_residual(px, 2, 2)]))
    if shifted > 1.0 and (aligned < MOSAIC_MAX_GRID_RATIO * shifted or
                          (aligned < MOSAIC_LOOSE_GRID_RATIO * shifted and aligned < MOSAIC_MAX_ALIGNED_RESIDUAL)):
        return "mosaic"
    return "plain"


def check_context(img: np.ndarray, prompt: str) -> tuple[int, int]:
    """(attributes satisfied, attributes asked) for one image and its prompt."""
    wanted = prompt_context(prompt)
    detectors = {"background": detect_background, "position": detect_position, "style": detect_style}
    ok = sum(detectors[k](img) == v for k, v in wanted.items())
    return ok, len(wanted)
