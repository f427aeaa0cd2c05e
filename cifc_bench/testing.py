"""Tiny, offline fixtures for tests and for plugin authors' own test suites.

``make_tiny_protocol(tmp_path)`` writes a protocol YAML plus a small image/caption dataset, so a whole run
(training, generation, scoring) takes seconds on a CPU with ``--model tiny-random --scorer tiny-random``::

    protocol = make_tiny_protocol(tmp_path, n_concepts=3)
    run_benchmark(tiny_run_config(protocol), tmp_path / "run")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cifc_bench.config import RunSpec

TINY_PROMPTS = {
    "object": ["A <TOK> on a table", "A <TOK> in the forest", "A photo of a <TOK>"],
    "style": ["A <TOK> of a house", "A <TOK> of a boat", "A <TOK> of a tree"],
}


def make_tiny_protocol(root: Path, n_concepts: int = 3, n_images: int = 4, size: int = 48, seed: int = 0,
                       name: str = "tiny") -> Path:
    """Write ``root/<name>.yaml`` and its data (coloured noise images with captions); return the YAML path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    data = Path(root) / f"{name}-data"
    concepts = []
    for i in range(n_concepts):
        kind = "style" if i % 3 == 2 else "object"
        cname, cls = f"thing{i}", ("painting" if kind == "style" else "toy")
        img_dir, cap_dir = data / "images" / cname, data / "caption" / cname
        img_dir.mkdir(parents=True, exist_ok=True)
        cap_dir.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=3)
        for k in range(n_images):
            pixels = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(img_dir / f"{k:02d}.png")
            (cap_dir / f"{k:02d}.txt").write_text(f"a {cls} on a plain background\n")
        concepts.append({
            "name": cname, "class_word": cls, "kind": kind, "placeholders": [f"<t{i}a>", f"<t{i}b>"],
            "initializers": [0.01, cls], "images": f"images/{cname}", "captions": f"caption/{cname}",
            "caption_phrase": cls, "prompt_set": kind, "eval_replacement": f"<t{i}a> <t{i}b>",
        })
    spec: dict[str, Any] = {
        "name": name, "version": "0.1", "data": {"dataset": name},
        "defaults": {"model": "tiny-random", "scorer": "tiny-random", "resolution": 32, "steps": 2,
                     "prompts_per_concept": 2, "images_per_prompt": 1, "num_inference_steps": 2,
                     "multi_images_per_prompt": 2, "calibration_images": 4},
        "concepts": concepts, "prompt_sets": TINY_PROMPTS,
    }
    if n_concepts >= 2:
        spec["multi_concept_prompts"] = [{
            "prompt": "A <t0a> <t0b> next to a <t1a> <t1b>", "concepts": ["thing0", "thing1"],
            "boxes": [[0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0]],
        }]
    path = Path(root) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_run_config(protocol: Path, **overrides: Any) -> RunSpec:
    """A run config for the tiny protocol whose data sits next to it."""
    settings: dict[str, Any] = dict(
        method="finetune", protocol=str(protocol), data_dir=str(Path(protocol).with_name(Path(protocol).stem + "-data")),
        model="tiny-random", scorer="tiny-random", steps=2, prompts_per_concept=2, images_per_prompt=1,
        resolution=32, num_inference_steps=2, device="cpu",
    )
    settings.update(overrides)
    return RunSpec(**settings)


def store_random_cidm_task(method, concept, generator, std: float) -> None:
    """Give a CIDM instance one more stored task without training: the concept's layer-wise tokens and a random
    LoRA (up ~ N(0, std)) per module. For tests and benchmarks that need stored tasks, not learned ones."""
    import torch

    method._add_tokens(concept, generator)
    for m in method.modules:
        m.reset_task()
        with torch.no_grad():
            m.up.normal_(0, std, generator=generator)
        m.store_task()
    method.task_placeholders.append(list(concept.placeholders))
