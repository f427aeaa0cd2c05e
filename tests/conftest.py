"""Shared fixtures. Tests never touch the network: the hub is forced offline and caches are per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("CIFC_BENCH_PROGRESS", "0")
# One thread per process, here and in the runs tests start: the tests' tiny models run fastest on one thread,
# and two processes of two threads each on a 2-core machine slow each other down tenfold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_CIFC10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifc10"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in models and scorers are created once per session in a private cache, never in the user's."""
    if "CIFC_BENCH_CACHE" not in os.environ or not os.environ.get("CIFC_BENCH_TEST_KEEP_CACHE"):
        os.environ["CIFC_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cifc-cache"))
    os.environ.pop("CIFC_BENCH_DATA", None)
    yield


@pytest.fixture(scope="session")
def cifc10_dir() -> Path:
    """The CIFC10 release beside the checkout; tests that need it skip with the reason when it is absent."""
    env = os.environ.get("CIFC10_TEST_DATA")
    path = Path(env) if env else SHARED_CIFC10
    if not (path / "images").is_dir():
        pytest.skip(f"CIFC10 data not found at {path} (set CIFC10_TEST_DATA to a copy of the release)")
    return path


@pytest.fixture(scope="session")
def tiny_protocol(tmp_path_factory) -> Path:
    from cifc_bench.testing import make_tiny_protocol

    return make_tiny_protocol(tmp_path_factory.mktemp("proto"), n_concepts=3)


@pytest.fixture
def pinned_one_thread():
    """One torch thread for the test, whatever an earlier test left: results compared with a recording or with
    a serial run are compared at one thread (a worker's run trains on one fewer than the process had)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
