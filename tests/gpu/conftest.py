"""Shared by the GPU check's modules: the model cache every worker shares, and the figures file."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest


def write_figure(record: dict) -> None:
    """Print a JSON line of timings and memory, and append it to ``CIFC_BENCH_GPU_FIGURES`` when set."""
    out = os.environ.get("CIFC_BENCH_GPU_FIGURES")
    line = json.dumps(record)
    print(line)
    if out:
        with open(out, "a") as handle:
            handle.write(line + "\n")


@pytest.fixture(scope="session")
def figure():
    return write_figure


@pytest.fixture(scope="session")
def gpu_cache_dir() -> Path:
    """One cache for every worker: the random models' folders are GBs, and their builders lock, so each is built
    once."""
    path = Path(os.environ.get("CIFC_BENCH_GPU_CACHE", Path(tempfile.gettempdir()) / "cifc-bench-gpu-cache"))
    os.environ["CIFC_BENCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="module")
def gpu_cache(gpu_cache_dir) -> Path:
    """The cache with the ``sd15-random`` folder (2 GB) built."""
    from cifc_bench.diffusion.models import sd15_random

    started = time.perf_counter()
    sd15_random()
    write_figure({"phase": "sd15-random folder ready", "seconds": round(time.perf_counter() - started, 1)})
    return gpu_cache_dir
