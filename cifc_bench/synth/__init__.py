"""The embedded synthetic tier: a procedural world, its pretrained base model and scorer, and ``synth10``."""

from __future__ import annotations

import os
from pathlib import Path


def weights_dir() -> Path:
    """The committed pretrained weights; ``CIFC_BENCH_SYNTH_WEIGHTS`` points elsewhere (e.g. a fresh pretrain)."""
    env = os.environ.get("CIFC_BENCH_SYNTH_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent / "weights"


def pretrain_state_dir() -> Path:
    """Where ``synth pretrain`` keeps its resumable training state (Adam moments, EMA: 38 MB, not what a run
    loads) when it writes the committed weights: ``synth-pretrain-state/`` in the checkout, outside the package;
    in an installed package without a checkout, the user cache."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "synth-pretrain-state"
    from cifc_bench.core.data import cache_dir

    return cache_dir() / "synth-pretrain-state"
