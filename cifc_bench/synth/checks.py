"""Exact oracles of the synthetic world: what an image shows, checked against what was asked, not estimated
by a learned scorer.

Each is a pure function of an image (uint8 32×32×3) and the request:

- :func:`identity_check`: which of a personal concept's identity attributes the image shows at the concept's
  place. An object's are what the base model can draw: its silhouette (nearest template by IoU), fill colour
  and second colour's coverage (credited only with the right fill); a style's are its palette and its texture.
  :func:`identity_acc` is their fraction, the exact counterpart of the scorer's ``ia``. The pattern layout and
  the mark, finer than the sampler's grain, are :func:`object_details`, reported apart.
- :func:`present`: whether a concept is present inside a box, for the exact concept-neglect rate
  ``cnr_exact``: its fill and pattern colours each cover at least half of the pixels a small render of it has.
- :func:`detect_shape`: the class by the same silhouette check, for ``class_acc`` beside the scorer's.

Pixels are read by their nearest named colour (object colours, backgrounds and background textures) within
:data:`COLOR_TOLERANCE`, so the grain that sampling leaves (σ ≈ 10 grey levels) does not change the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from cifc_bench.synth import world

#: every colour a pixel of the world can have, clean: object colours, backgrounds, and the background textures
PALETTE = {**world.COLORS, **{f"bg:{k}": v for k, v in world.BACKGROUNDS.items()},
           "bg:grass-blade": (35, 155, 35), "bg:water-wave": (65, 120, 210)}
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)
#: a pixel farther than this (RGB distance) from every named colour is read as no colour
COLOR_TOLERANCE = 70.0
#: a colour is shown when it covers at least this share of the pixels it covers in a perfect render
COVERAGE = 0.5
#: how far (px) from its expected anchor an object's centre is searched
SEARCH = 2


def color_labels(img: np.ndarray) -> np.ndarray:
    """Per pixel, the index into :data:`_NAMES` of its nearest named colour, or -1 beyond the tolerance."""
    px = np.asarray(img, dtype=np.float32)[..., :3].reshape(-1, 1, 3)
    dist = np.sqrt(((px - _RGB[None]) ** 2).sum(-1))
    labels = dist.argmin(-1)
    labels[dist.min(-1) > COLOR_TOLERANCE] = -1
    return labels.reshape(img.shape[:2])


def color_mask(labels: np.ndarray, colour: str) -> np.ndarray:
    """Pixels read as ``colour`` (an object colour, or a background name used as a mark colour)."""
    name = colour if colour in world.COLORS else f"bg:{colour}"
    return labels == _NAMES.index(name)


def object_mask(labels: np.ndarray) -> np.ndarray:
    """Pixels read as any object colour."""
    return (labels >= 0) & (labels < len(world.COLORS))


@lru_cache(maxsize=4096)
def _template(shape: str, cy: int, cx: int, size: str) -> np.ndarray:
    mask = world.shape_mask(shape, (cy, cx), size)
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=4096)
def _pattern(pattern: str, cy: int, cx: int) -> np.ndarray:
    yy, xx = np.mgrid[0 : world.SIZE, 0 : world.SIZE]
    mask = world._pattern_mask(pattern, yy - cy, xx - cx)
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True, slots=True)
class Fit:
    """The silhouette template that best matches an object mask (slots: the search builds one per better match)."""

    shape: str
    size: str
    center: tuple[int, int]
    iou: float


def _centers(anchor: tuple[int, int], search: int) -> list[tuple[int, int]]:
    return [(anchor[0] + dy, anchor[1] + dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)]


def fit_silhouette(mask: np.ndarray, anchor: tuple[int, int] | None = None, sizes=tuple(world.SIZES),
                   shapes=world.SHAPES, region: np.ndarray | None = None) -> Fit | None:
    """Nearest template by IoU (inside ``region`` when given) over shapes, sizes and centres within
    :data:`SEARCH` px of ``anchor`` (default: the mask's centroid). None when the mask is empty."""
    if region is not None:
        mask = mask & region
    if mask.sum() < 3:
        return None
    if anchor is None:
        ys, xs = np.nonzero(mask)
        anchor = (int(round(ys.mean())), int(round(xs.mean())))
    best = None
    for shape in shapes:
        for size in sizes:
            for c in _centers(anchor, SEARCH):
                t = _template(shape, c[0], c[1], size)
                if region is not None:
                    t = t & region
                union = int((t | mask).sum())
                iou = int((t & mask).sum()) / union if union else 0.0
                if best is None or iou > best.iou:
                    best = Fit(shape, size, c, iou)
    return best


def detect_shape(img: np.ndarray, anchor: tuple[int, int] | None = None) -> str | None:
    """The class of the (one) object in ``img`` by the silhouette check; None when nothing is drawn."""
    fit = fit_silhouette(object_mask(color_labels(img)), anchor)
    return fit.shape if fit else None


def _expected_counts(scene: world.Scene, center: tuple[int, int], size: str) -> tuple[int, int]:
    """(fill pixels, pattern pixels) of a perfect render of ``scene`` at ``center`` and ``size``."""
    t = _template(scene.shape, center[0], center[1], size)
    if scene.pattern == "solid":
        return int(t.sum()), 0
    p = t & _pattern(scene.pattern, center[0], center[1])
    return int(t.sum() - p.sum()), int(p.sum())


def _pattern_of(labels: np.ndarray, scene: world.Scene, fit: Fit) -> str:
    """The pattern whose layout best explains which object pixels carry a colour other than the fill (the
    layout, whatever its colour), searched over centres within 1 px of the fit (a pattern's phase follows the
    object's centre). A detail: reported apart, never counted by :func:`identity_acc`."""
    shown = object_mask(labels) & ~color_mask(labels, scene.fill)
    best, best_score = "solid", -1.0
    for c in _centers(fit.center, 1):
        t = _template(fit.shape, c[0], c[1], fit.size)
        n = max(int(t.sum()), 1)
        for pattern in world.PATTERNS:
            expected = t & _pattern(pattern, c[0], c[1]) if pattern != "solid" else np.zeros_like(t)
            score = float(((shown == expected) & t).sum()) / n
            if score > best_score:
                best, best_score = pattern, score
    return best


#: what :func:`identity_acc` counts of a personal object: what the 32-pixel base model can draw. Its sampler
#: never keeps a 2×2 mark and draws a 1–2-pixel pattern layout in 1 % of images even when asked in words
#: (../shared/docs/synth-identity-measurements.md); those are :func:`object_details`, reported apart
OBJECT_ATTRIBUTES = ("silhouette", "fill", "second_colour")


def _fit(labels: np.ndarray, anchor, size) -> Fit | None:
    return fit_silhouette(object_mask(labels), anchor, (size,) if size else tuple(world.SIZES))


def object_identity(img: np.ndarray, scene: world.Scene, anchor: tuple[int, int] | None = None,
                    size: str | None = None) -> dict[str, bool]:
    """Which of :data:`OBJECT_ATTRIBUTES` the image shows for the personal object ``scene``, near ``anchor``
    (default: the centroid of the object-coloured pixels) at ``size`` (default: either): the silhouette, the
    fill colour, and the second colour's coverage, credited only with the right fill (on a wrong fill, any
    second colour is a generic object's, not the concept's). A solid object has no second colour."""
    labels = color_labels(img)
    attrs = OBJECT_ATTRIBUTES if scene.pattern != "solid" else OBJECT_ATTRIBUTES[:2]
    fit = _fit(labels, anchor, size)
    if fit is None:
        return dict.fromkeys(attrs, False)
    exp_fill, exp_pattern = _expected_counts(scene, fit.center, fit.size)
    t = _template(fit.shape, fit.center[0], fit.center[1], fit.size) | _template(scene.shape, *fit.center, fit.size)
    out = {"silhouette": fit.shape == scene.shape, "fill": _fill_shown(labels, scene, t, exp_fill, exp_pattern)}
    if scene.pattern != "solid":
        out["second_colour"] = out["fill"] and \
            int((color_mask(labels, scene.pattern_color) & t).sum()) >= COVERAGE * exp_pattern
    return out


def _fill_shown(labels: np.ndarray, scene: world.Scene, template: np.ndarray, expected: int,
                expected_second: int) -> bool:
    """The fill covers at least :data:`COVERAGE` of its pixel count in a perfect render; no other object colour
    covers more of the object; and the second colour does not outweigh it, each counted against its own pixel
    count in a perfect render (by a factor 1 / COVERAGE at most). So an object striped in the concept's fill and
    another colour, or one with the concept's colours exchanged, has a wrong fill
    (measured: results/synth-check/identity-oracle.json)."""
    counts = np.bincount(labels[template & object_mask(labels)], minlength=len(world.COLORS))
    fill = _NAMES.index(scene.fill)
    second = _NAMES.index(scene.pattern_color) if scene.pattern != "solid" else None
    rivals = [k for k in range(len(world.COLORS)) if k not in (fill, second)]
    if int(counts[fill]) < COVERAGE * expected or int(counts[fill]) < int(counts[rivals].max()):
        return False
    if second is None:
        return True
    return counts[fill] / max(expected, 1) >= COVERAGE * counts[second] / max(expected_second, 1)


def object_details(img: np.ndarray, scene: world.Scene, anchor: tuple[int, int] | None = None,
                   size: str | None = None) -> dict[str, bool]:
    """The details finer than the sampler's grain, reported apart from :func:`object_identity`: the pattern
    ``layout`` and, for an identity that has one, the 2×2 ``mark``."""
    labels = color_labels(img)
    fit = _fit(labels, anchor, size)
    out = {"layout": fit is not None and _pattern_of(labels, scene, fit) == scene.pattern}
    if scene.mark is not None:
        out["mark"] = fit is not None and _mark_shown(labels, scene, fit)
    return out


def _mark_shown(labels: np.ndarray, scene: world.Scene, fit: Fit) -> bool:
    """At least two of the mark's four pixels have its colour, at a centre within 1 px of the fit."""
    colour, corner = scene.mark
    shown = color_mask(labels, colour)
    for c in _centers(fit.center, 1):
        y, x = world.mark_box(scene.shape, c, fit.size, corner)
        if shown[max(y, 0) : y + 2, max(x, 0) : x + 2].sum() >= 2:
            return True
    return False


# ----------------------------------------------------------------------------------------------------------
# Personal styles: a palette and a texture each, read from the whole picture.

def _rows_ratio(lum: np.ndarray, mask: np.ndarray) -> float:
    return float(lum[mask].mean() / max(lum[~mask].mean(), 1e-6))


def style_identity(img: np.ndarray, style: str) -> dict[str, bool]:
    """Whether the picture shows the personal ``style``'s palette and texture (see
    :func:`cifc_bench.synth.world._personal_style`)."""
    px = np.asarray(img, dtype=np.float32)[..., :3]
    lum = px.mean(-1)
    yy, xx = np.mgrid[0 : world.SIZE, 0 : world.SIZE]
    if style == "neon":  # channels rotated and lifted by 50; every third row darkened to 0.35
        lines = yy % 3 == 0
        return {"palette": float((px[~lines].min(-1) >= 35).mean()) >= 0.9,
                "texture": _rows_ratio(lum, lines) <= 0.6}
    if style == "sepia":  # a brown tone (R > G > B) with a diagonal hatch darkened to 0.55
        hatch = (xx + yy) % 4 == 0
        lit = px[~hatch][px[~hatch][:, 0] >= 40]  # grain decides the channel order of near-black pixels
        r, g, b = lit[:, 0], lit[:, 1], lit[:, 2]
        tone = float(((r >= g - 8) & (g >= b - 8) & (b <= 0.8 * r + 10)).mean()) if len(lit) else 0.0
        return {"palette": tone >= 0.9,
                "texture": _rows_ratio(lum, hatch) <= 0.75}
    if style == "poster":  # two levels per channel; a bright yellow grid every 8 px
        grid = (yy % 8 == 0) | (xx % 8 == 0)
        near = np.minimum(np.abs(px[~grid] - 25), np.abs(px[~grid] - 235)).max(-1) <= 40
        grid_colour = np.sqrt(((px[grid] - np.array([250, 250, 120])) ** 2).sum(-1)) <= COLOR_TOLERANCE
        return {"palette": float(near.mean()) >= 0.8, "texture": float(grid_colour.mean()) >= 0.5}
    raise ValueError(f"unknown personal style {style!r}; known: {sorted(world.PERSONAL_STYLES)}")


# ----------------------------------------------------------------------------------------------------------
# What a generator field of a protocol asks for, and the checks per image and prompt.

def concept_target(generator: dict) -> world.Scene | str:
    """The personal object (a Scene) or personal style (its name) a protocol's ``generator`` field declares."""
    if "personal_style" in generator:
        return generator["personal_style"]
    return world.Scene(shape=generator["shape"], fill=generator["fill"], pattern=generator["pattern"],
                       pattern_color=generator.get("pattern_color"),
                       mark=tuple(generator["mark"]) if generator.get("mark") else None)


def identity_check(img: np.ndarray, target: world.Scene | str, prompt: str) -> dict[str, bool] | None:
    """The identity attributes ``img`` shows for the concept ``target``, asked for by ``prompt``; None when
    the prompt asks for a known style (a mosaic or sketch redraws the object, so its identity is not drawn
    as itself)."""
    context = world.prompt_context(prompt)
    if "style" in context:
        return None
    if isinstance(target, str):
        return style_identity(img, target)
    anchor = world.POSITIONS.get(context.get("position", ""))
    size = next((s for s in world.SIZES if f" {s} " in f" {prompt} "), None)
    return object_identity(img, target, anchor, size)


def identity_acc(images, prompts, target: world.Scene | str) -> float:
    """Mean fraction of identity attributes shown, over the images whose prompt can show them (NaN if none)."""
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        check = identity_check(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image), target, prompt)
        if check is not None:
            scores.append(np.mean(list(check.values())))
    return float(np.mean(scores)) if scores else float("nan")


def box_region(box) -> np.ndarray:
    """Pixels of a normalised (y0, x0, y1, x1) box, rounded outwards as the scorer's crop is."""
    from cifc_bench.evaluation.neglect import box_pixels

    top, left, bottom, right = box_pixels(box, world.SIZE, world.SIZE)
    region = np.zeros((world.SIZE, world.SIZE), dtype=bool)
    region[top:bottom, left:right] = True
    return region


def presence_parts(img: np.ndarray, target: world.Scene | str, box=None) -> dict[str, bool]:
    """The parts of :func:`present`, each on its own: for an object, whether inside ``box`` its ``fill`` and
    its ``pattern`` colour (True for a solid object) each cover at least :data:`COVERAGE` of their pixel counts
    in a small render of it (the size of two-object scenes); for a style, its ``palette`` and ``texture``."""
    if isinstance(target, str):
        return style_identity(img, target)
    labels = color_labels(img)
    region = box_region(box) if box is not None else np.ones(labels.shape, dtype=bool)
    centre = (world.SIZE // 2, world.SIZE // 2)
    exp_fill, exp_pattern = _expected_counts(target, centre, "small")
    return {
        "fill": int((color_mask(labels, target.fill) & region).sum()) >= COVERAGE * exp_fill,
        "pattern": target.pattern == "solid"
        or int((color_mask(labels, target.pattern_color) & region).sum()) >= COVERAGE * exp_pattern,
    }


def present(img: np.ndarray, target: world.Scene | str, box=None) -> bool:
    """Is the concept present? Every part of :func:`presence_parts` holds."""
    return all(presence_parts(img, target, box).values())


#: the fewest object-coloured pixels in a box that can be a small object (the thinnest silhouette has ~45)
DRAWN_MIN_PIXELS = 12


def drawn(img: np.ndarray, target: world.Scene | str, box=None) -> bool:
    """Is an object of the concept's silhouette drawn inside ``box``, whatever its colours? The object-coloured
    pixels there, fitted by the small templates, fit the concept's shape best. Looser than :func:`present`:
    it tells a concept left out of the picture from one drawn without its identity. A style: as
    :func:`present`."""
    if isinstance(target, str):
        return present(img, target, box)
    labels = color_labels(img)
    region = box_region(box) if box is not None else np.ones(labels.shape, dtype=bool)
    mask = object_mask(labels) & region
    if int(mask.sum()) < DRAWN_MIN_PIXELS:
        return False
    fit = fit_silhouette(mask, sizes=("small",), region=region)
    return fit is not None and fit.shape == target.shape


# ----------------------------------------------------------------------------------------------------------
# Style transfer: was the input's content kept? Compared with the world's exact answer, the input redrawn by
# the personal style's own pixel map, so that palette and texture changes are not counted as content changes.

def foreground(img: np.ndarray) -> np.ndarray:
    """Pixels far from the picture's border colour after a 3×3 median (which removes the styles' one-pixel
    texture lines and the sampling grain): the drawn object(s)."""
    px = world._median3(np.asarray(img, dtype=np.float32)[..., :3])
    # the ring one pixel in: the median of the outermost ring repeats its edge, so a texture line there stays
    border = np.concatenate([px[1:3].reshape(-1, 3), px[-3:-1].reshape(-1, 3), px[:, 1:3].reshape(-1, 3),
                             px[:, -3:-1].reshape(-1, 3)])
    med = np.median(border, axis=0)
    spread = float(np.percentile(np.abs(border - med).sum(-1), 95))
    return np.abs(px - med).sum(-1) > max(45.0, spread + 30.0)


def _components(mask: np.ndarray, min_size: int = 12) -> list[np.ndarray]:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    parts = [labels == k for k in range(1, n + 1)]
    return sorted((p for p in parts if p.sum() >= min_size), key=lambda p: -int(p.sum()))


def content_preserved(output: np.ndarray, source: np.ndarray, style: str) -> dict[str, bool] | None:
    """Whether ``output`` keeps the content of ``source`` redrawn in the personal ``style``: the same number of
    objects, the largest at the same place (centroids within 2.5 px) with the same silhouette (IoU >= 0.5),
    judged against the style's exact rendering of the source. None when that rendering shows no object (a
    style can hide an object whose tone matches its background)."""
    expected = _components(foreground(world._personal_style(np.asarray(source, dtype=np.float32)[..., :3], style)))
    if not expected:
        return None
    got = _components(foreground(output))
    if not got:
        return {"count": False, "position": False, "silhouette": False}
    a, b = expected[0], got[0]
    centre = lambda m: np.argwhere(m).mean(0)  # noqa: E731
    return {"count": len(got) == len(expected),
            "position": float(np.linalg.norm(centre(a) - centre(b))) <= 2.5,
            "silhouette": float((a & b).sum() / (a | b).sum()) >= 0.5}
