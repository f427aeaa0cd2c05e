"""Seeds derived from names, so that every method and every model state sees the same noise.

``image_seed("cifc10", "dog", 3, 0)`` is the seed of the first sample of prompt 3 of concept ``dog``;
it does not depend on the method, the task being evaluated or the order of generation.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (unlike ``hash()``, identical across processes)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def image_seed(protocol: str, concept: str, prompt_index: int, sample_index: int) -> int:
    """Seed of one evaluation image: independent of the method, the model state and the training seed."""
    return derive_seed("image", protocol, concept, prompt_index, sample_index)


def train_seed(run_seed: int, task_index: int) -> int:
    """Seed set before each task's training, so a resumed run trains exactly like an uninterrupted one."""
    return derive_seed("train", run_seed, task_index)
