"""``cifc-bench synth neglect RUN ...``: why a run's exact neglect rate is what it is.

``cnr_exact`` calls a multi-concept image neglected when any of its concepts misses a part of its presence check
(:func:`cifc_bench.synth.checks.presence_parts`: the fill colour, the pattern colour). A rate at the ceiling can
mean the concepts are not drawn at all, or drawn without their identity; on the final model's saved images this
counts, per concept, how often each part holds, and what the rate would be with the fill colour alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def presence_table(images, targets, boxes) -> dict[str, np.ndarray]:
    """{part: bool array [images, concepts]} of :func:`presence_parts` for images that share one prompt's
    concepts (``targets``) and ``boxes``."""
    from cifc_bench.synth.checks import presence_parts

    rows = [[presence_parts(np.asarray(im.convert("RGB")), t, b) for t, b in zip(targets, boxes, strict=True)]
            for im in images]
    parts = list(rows[0][0]) if rows and rows[0] else []
    return {p: np.array([[cell[p] for cell in row] for row in rows], dtype=bool) for p in parts}


def neglect_rates(tables: list[dict[str, np.ndarray]], parts: tuple[str, ...]) -> float:
    """The fraction of images (over every prompt's table) in which some concept misses one of ``parts``."""
    flags = [~np.all([t[p] for p in parts], axis=0).all(axis=1) for t in tables]
    return float(np.concatenate(flags).mean())


def diagnose(run_dir: Path) -> dict[str, Any]:
    """The final model's multi-concept images of ``run_dir``: neglect with every part and with the fill alone,
    and per concept the rate of each part."""
    from PIL import Image

    from cifc_bench.core.config import RunSpec
    from cifc_bench.core.results import read_result
    from cifc_bench.evaluation.image_cache import multi_dir
    from cifc_bench.run.setup import resolve_run
    from cifc_bench.synth.plugin import exact_target

    result = read_result(run_dir)
    neglect = result.get("neglect") or {}
    if not neglect.get("prompts"):
        raise ValueError(f"{run_dir} measured no concept neglect (its protocol has no multi-concept prompts)")
    config, spec = resolve_run(RunSpec.from_dict(result["run_info"]["config"]))[:2]
    sequence = spec.bind(spec.data_root(config.data_dir))
    folder = multi_dir(run_dir, len(result["tasks"]) - 1)
    tables, per_concept = [], {}
    for q, prompt in enumerate(neglect["prompts"]):
        files = sorted(folder.glob(f"q{q:03d}_s*.png"))
        if not files:
            raise ValueError(f"{folder} has no images of multi-concept prompt {q}: this needs a run directory with "
                             "its images (committed reference runs keep result.json only; re-run the method)")
        targets = [exact_target(sequence.concept(c)) for c in prompt["concepts"]]
        table = presence_table([Image.open(f) for f in files], targets, [tuple(b) for b in prompt["boxes"]])
        tables.append(table)
        for k, name in enumerate(prompt["concepts"]):
            for part, flags in table.items():
                per_concept.setdefault(name, {}).setdefault(part, []).extend(flags[:, k].tolist())
    parts = tuple(tables[0])
    return {
        "run": str(run_dir),
        "images": int(sum(len(next(iter(t.values()))) for t in tables)),
        "neglect": neglect_rates(tables, parts),
        "neglect_fill_only": neglect_rates(tables, ("fill",)),
        "concepts": {name: {part: float(np.mean(v)) for part, v in by_part.items()}
                     for name, by_part in per_concept.items()},
    }
