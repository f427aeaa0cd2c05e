"""The embedded synthetic tier: a procedural world, its pretrained base model and scorer, and ``synth10``."""

from __future__ import annotations

import os
from pathlib import Path


def weights_dir() -> Path:
    """The committed pretrained weights; ``CIFC_BENCH_SYNTH_WEIGHTS`` points elsewhere (e.g. a fresh pretrain)."""
    env = os.environ.get("CIFC_BENCH_SYNTH_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent / "weights"
