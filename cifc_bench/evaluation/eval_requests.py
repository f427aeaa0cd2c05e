"""What every evaluation asks for, the same in every model state and for every method: each concept's
requests and each multi-concept prompt's, with their fixed seeds and cache file names, and which states the
run's schedule evaluates. The harness generates them; ``--dry-run`` counts them."""

from __future__ import annotations

from pathlib import Path

from cifc_bench.api import Concept, GenerationRequest, TaskSequence
from cifc_bench.core.config import RunSpec
from cifc_bench.core.seeding import derive_seed, image_seed


def concept_requests(protocol: str, concept: Concept, prompts_per_concept: int, images_per_prompt: int):
    """The evaluation requests of one concept and their cache file names; the same in every model state."""
    out = []
    for p, prompt in enumerate(concept.eval_prompts[:prompts_per_concept]):
        for k in range(images_per_prompt):
            req = GenerationRequest(prompt=prompt, seed=image_seed(protocol, concept.name, p, k), concepts=(concept,))
            out.append((req, f"p{p:03d}_s{k:03d}.png"))
    return out


def multi_requests(sequence: TaskSequence, q: int, n_images: int):
    """Requests for multi-concept prompt ``q`` and their cache file names; the same in every model state."""
    m = sequence.multi_concept_prompts[q]
    concepts = tuple(sequence.concept(c) for c in m.concepts)
    return [(GenerationRequest(prompt=m.prompt, seed=derive_seed("multi", sequence.name, q, k), concepts=concepts,
                               boxes=m.boxes, region_prompts=m.region_prompts), f"q{q:03d}_s{k:03d}.png")
            for k in range(n_images)]


RETENTION = "_retention"  # the folder of the generic prompts' images, beside the concepts' (none starts with _)


def retention_requests(sequence: TaskSequence) -> list[tuple[GenerationRequest, str]]:
    """The generic requests and their file names: the same for the base model and every model state."""
    return [(GenerationRequest(prompt=p, seed=derive_seed("retention", sequence.name, q, k)), f"r{q:03d}_s{k:03d}.png")
            for q, p in enumerate(sequence.retention_prompts) for k in range(sequence.retention_images)]


def retention_dir(run_dir: Path, j: int | None) -> Path:
    """The folder of the retention images after task ``j`` (None: the base model's)."""
    return Path(run_dir) / "images" / ("base" if j is None else f"after_task_{j:02d}") / RETENTION


def evaluated_after(cfg: RunSpec, j: int, n_tasks: int) -> bool:
    """Whether the run's schedule evaluates the model state after task ``j``."""
    return cfg.eval_schedule == "each-task" or j == n_tasks - 1
