"""Finding, checking and saving images; the one place that knows which file endings are images."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(folder: Path) -> tuple[Path, ...]:
    """The images of a folder, sorted by name so that every run sees the same order."""
    return tuple(sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))


def check_image(path: Path) -> str | None:
    """None when ``path`` decodes as an image, else a sentence that says why not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"{path} is not a readable image ({err.__class__.__name__}: {err})"
    return None


def load_rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def fit_input(image, resolution: int):
    """An input image as the sampler starts from it, and as the track metrics compare against: RGB, resized
    (PIL's default filter) to ``resolution`` × ``resolution`` unless it already is."""
    image = image.convert("RGB")
    return image if image.size == (resolution, resolution) else image.resize((resolution, resolution))


def save_atomic(image, path: Path) -> None:
    """Write a PNG so that a kill never leaves a half-written file behind a valid name."""
    from cifc_bench.core.atomic import fault_point

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share one
    image.save(tmp, format="PNG", compress_level=1)  # lossless at any level; 1 encodes several times faster than 6
    fault_point("image")
    os.replace(tmp, path)
