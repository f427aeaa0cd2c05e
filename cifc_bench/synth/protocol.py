"""Data of the ``synth10`` protocol, rendered from the personal identities its YAML file declares.

Reference images vary position, size and background (objects) or the depicted scene (styles), 4-7 per
concept, each with a caption in the world's grammar that names only the class word, so the identity must be
learned from pixels. Rendering is deterministic and checked against ``synth10.sha256`` beside its YAML file::

    root = ensure_data(None)         # the user cache, rendered on first use
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifc_bench.synth import world

PROTOCOL = "synth10"
DATA_VERSION = "v3"  # v3: protocol 3.0 (no marks, striped boxes)
REFERENCE_SEED = 2024


@dataclass(frozen=True)
class PersonalObject:
    name: str
    class_word: str
    scene: world.Scene
    n_images: int


@dataclass(frozen=True)
class PersonalStyle:
    name: str
    style: str
    n_images: int


def personal_concepts(protocol: str = PROTOCOL) -> list[PersonalObject | PersonalStyle]:
    """The identities declared in the protocol file's ``generator`` fields, in task order."""
    from cifc_bench.core.protocol import load_protocol

    out: list[PersonalObject | PersonalStyle] = []
    for c in load_protocol(protocol).raw["concepts"]:
        s = c["generator"]
        if c["kind"] == "style":
            out.append(PersonalStyle(c["name"], s["personal_style"], s["images"]))
        else:
            scene = world.Scene(shape=s["shape"], fill=s["fill"], pattern=s["pattern"], pattern_color=s["pattern_color"],
                                mark=tuple(s["mark"]) if s.get("mark") else None)
            out.append(PersonalObject(c["name"], c["class_word"], scene, s["images"]))
    return out


def object_identities(protocol: str = PROTOCOL) -> set[tuple]:
    return {world.identity(c.scene) for c in personal_concepts(protocol) if isinstance(c, PersonalObject)}


def reference_examples(concept: PersonalObject | PersonalStyle, seed: int = REFERENCE_SEED):
    """(image, caption) pairs of one concept's reference set."""
    rng = np.random.default_rng([seed, sum(map(ord, concept.name))])
    positions = list(world.POSITIONS)
    backgrounds = [b for b in world.BACKGROUNDS
                   if not (isinstance(concept, PersonalObject) and world.low_contrast(concept.scene.fill, b))]
    out = []
    for k in range(concept.n_images):
        if isinstance(concept, PersonalObject):
            scene = world.replace(concept.scene, position=positions[(k + int(rng.integers(5))) % 5],
                                  background=backgrounds[int(rng.integers(len(backgrounds)))],
                                  size=str(rng.choice(list(world.SIZES))))
            text = world.caption(scene, subject=concept.class_word)
        else:
            scene = world.replace(world.random_scene(rng), style="plain", personal_style=concept.style)
            text = "a picture of " + world.caption(world.replace(scene, personal_style=None))
        out.append((world.render(scene, seed=int(rng.integers(1 << 31))), text))
    return out


def write_data(root: Path, protocol: str = PROTOCOL) -> None:
    from PIL import Image

    from cifc_bench.core.progress import progress

    for concept in progress(personal_concepts(protocol), desc=f"render the {protocol} data (first use only)"):
        img_dir, cap_dir = root / "images" / concept.name, root / "caption" / concept.name
        img_dir.mkdir(parents=True, exist_ok=True)
        cap_dir.mkdir(parents=True, exist_ok=True)
        for k, (pixels, text) in enumerate(reference_examples(concept)):
            Image.fromarray(pixels).save(img_dir / f"{k:02d}.png", optimize=False)
            (cap_dir / f"{k:02d}.txt").write_text(text + "\n")


def ensure_data(data_dir: str | os.PathLike | None = None) -> Path:
    """The rendered dataset: ``data_dir`` if given (rendered there when empty), else the user cache."""
    from cifc_bench.core.atomic import atomic_directory
    from cifc_bench.core.data import cache_dir

    root = Path(data_dir).expanduser() if data_dir else cache_dir() / "data" / f"{PROTOCOL}-{DATA_VERSION}"
    if (root / "images").is_dir():
        return root
    with atomic_directory(root, keep=lambda p: (p / "images").is_dir()) as tmp:
        write_data(tmp)
    return root
