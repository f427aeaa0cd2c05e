"""The GPU check: every registered method on CUDA at SD-1.5's size, killed mid-run and resumed.

Each method trains two tasks of a tiny protocol on SD-1.5's architecture with random weights (``sd15-random``)
at 512 px, is killed (SIGKILL) while it saves its state after the second task, resumes from the first task's
state loaded onto the GPU, and must finish with finite scores, images that are not flat and its peak GPU
memory recorded. It is what a GPU machine runs first (``docs/guides/gpu.md``)::

    pytest -m gpu tests/gpu -n 4 -p xdist      # pytest-xdist optional; without it drop "-n 4 -p xdist"

Skipped without CUDA. ``CIFC_BENCH_GPU_FIGURES=FILE`` appends each method's timings and memory as JSON lines.
Custom Diffusion runs with 4 class images instead of its official 200: the check is about devices, not fidelity.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifc_bench.core.registry import METHODS, list_plugins

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RESOLUTION = 512
#: method arguments that keep the check short without changing which code runs on the device
QUICK_ARGS = {"custom-diffusion": ["reg_images=4"]}


def _command(method: str, protocol: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "cifc_bench.cli", "run", "--method", method, "--protocol", str(protocol),
               "--data-dir", str(protocol.with_name("tiny-data")), "--model", "sd15-random", "--scorer", "tiny-random",
               "--dino", "none", "--device", "cuda", "--steps", "2", "--batch-size", "1",
               "--prompts-per-concept", "1", "--images-per-prompt", "2", "--resolution", str(RESOLUTION),
               "--num-inference-steps", "2", "--calibration-images", "2", "--multi-images-per-prompt", "1",
               "--eval-batch-size", "2", "--dtype", os.environ.get("CIFC_BENCH_GPU_DTYPE", "bf16"), "--out", str(out)]
    if method in QUICK_ARGS:
        command += ["--method-args", *QUICK_ARGS[method]]
    return command


@pytest.mark.parametrize("method", sorted(list_plugins(METHODS)))
def test_method_trains_is_killed_resumes_and_generates_on_cuda(method, gpu_cache, figure, tmp_path):
    from cifc_bench.testing import make_tiny_protocol

    protocol = make_tiny_protocol(tmp_path, n_concepts=2, size=64)
    out = tmp_path / "run"
    env = {**os.environ, "CIFC_BENCH_CACHE": str(gpu_cache), "CIFC_BENCH_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    killed = subprocess.run(_command(method, protocol, out), env={**env, "CIFC_BENCH_FAULT": "kill:state:2"},
                            capture_output=True, text=True, timeout=900)
    first = time.perf_counter() - started
    assert killed.returncode == -signal.SIGKILL, f"{method}: expected the planted kill, got rc {killed.returncode}:\n" \
        + killed.stderr[-3000:]
    assert len(json.loads((out / "result.json").read_text())["tasks"]) == 1, "the kill came after task 1 only"

    started = time.perf_counter()
    resumed = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "run", "--resume", str(out)], env=env,
                             capture_output=True, text=True, timeout=900)
    second = time.perf_counter() - started
    assert resumed.returncode == 0, f"{method}: --resume on CUDA failed:\n{resumed.stderr[-4000:]}"

    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and len(result["tasks"]) == 2
    for name, matrix in result["matrices"].items():
        cells = [v for row in matrix for v in row if v is not None]
        assert cells and all(math.isfinite(v) for v in cells), f"{method}: {name} has no finite scores: {matrix}"
    images = sorted((out / "images").rglob("*.png"))
    assert images, f"{method}: no images written"
    from PIL import Image

    assert all(np.ptp(np.asarray(Image.open(p))) > 0 for p in images), f"{method}: a flat image"
    peaks = [t["peak_cuda_mb"] for t in result["tasks"]]
    assert all(p and p > 1000 for p in peaks), f"{method}: peak GPU memory not recorded on the run's device: {peaks}"
    figure({"method": method, "killed_run_s": round(first, 1), "resume_s": round(second, 1),
             "train_s": [t["train_seconds"] and round(t["train_seconds"], 2) for t in result["tasks"]],
             "eval_s": [round(t["eval_seconds"], 2) for t in result["tasks"]], "peak_cuda_mb": [round(p) for p in peaks],
             "images": len(images)})
