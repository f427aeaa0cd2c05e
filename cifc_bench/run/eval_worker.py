"""Evaluation beside training: a second one-thread process generates the images of the state after task j
while task j+1 trains (``--eval-workers 1``); the run's process scores them. Images and states equal a
one-process run's byte for byte."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from cifc_bench.core.config import RunSpec
from cifc_bench.evaluation.context import RunContext
from cifc_bench.evaluation.image_cache import generate_share
from cifc_bench.run.rundir import method_after
from cifc_bench.run.setup import load_context


class EvalWorker:
    """A second process, one thread, that generates the evaluation images of a saved model state: the method
    is rebuilt on a fresh model and restored from ``state/after_task_NN``, as ``--resume`` restores one, and the
    images are written where the run's own evaluation reads them (:func:`generate_share`)."""

    def __init__(self, ctx: RunContext) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                                        initargs=(ctx.config, ctx.run_dir, ctx.calibration))

    def submit(self, j: int):
        return self.pool.submit(_worker_generate, j)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}


def _worker_start(config: RunSpec, run_dir: Path, calibration) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["ctx"] = load_context(config, run_dir, calibration=calibration, with_method=False)


def _worker_generate(j: int) -> float:
    started = time.perf_counter()
    ctx = _WORKER["ctx"]
    generate_share(dataclasses.replace(ctx, method=method_after(ctx, j)), j)
    return time.perf_counter() - started
