"""The GPU check's SDXL part: SDXL base's architecture at full size (``sdxl-random``) at 1024 px on CUDA.

``base`` samples, and ``finetune`` and ``cidm`` train two tasks of a tiny protocol and generate, at SDXL's own
resolution in bf16 (``CIFC_BENCH_GPU_DTYPE``). Each must finish with finite scores, 1024-px images that are not
flat, and its peak GPU memory recorded. The folder (about 7 GB in fp16) is built once into the GPU cache::

    pytest -m gpu tests/gpu -k sdxl

Skipped without CUDA; figures go where ``tests/gpu/test_gpu_methods.py`` puts them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RESOLUTION = 1024


@pytest.fixture(scope="module")
def sdxl_cache(gpu_cache_dir, figure):
    from cifc_bench.diffusion.sdxl import sdxl_random

    started = time.perf_counter()
    sdxl_random()
    figure({"phase": "sdxl-random folder ready", "seconds": round(time.perf_counter() - started, 1)})
    return gpu_cache_dir


@pytest.mark.parametrize("method", ["base", "finetune", "cidm"])
def test_sdxl_at_full_size_trains_and_generates_at_1024_px_on_cuda(method, sdxl_cache, figure, tmp_path):
    from cifc_bench.testing import make_tiny_protocol

    protocol = make_tiny_protocol(tmp_path, n_concepts=2, size=RESOLUTION)
    out = tmp_path / "run"
    env = {**os.environ, "CIFC_BENCH_CACHE": str(sdxl_cache), "CIFC_BENCH_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "cifc_bench.cli", "run", "--method", method, "--protocol", str(protocol),
               "--data-dir", str(protocol.with_name("tiny-data")), "--model", "sdxl-random", "--scorer", "tiny-random",
               "--dino", "none", "--device", "cuda", "--steps", "2", "--batch-size", "1", "--prompts-per-concept", "1",
               "--images-per-prompt", "1", "--resolution", str(RESOLUTION), "--num-inference-steps", "2",
               "--calibration-images", "2", "--multi-images-per-prompt", "1", "--eval-batch-size", "1",
               "--dtype", os.environ.get("CIFC_BENCH_GPU_DTYPE", "bf16"), "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"{method} on sdxl-random failed:\n{done.stderr[-4000:]}"

    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["run_info"]["model_family"] == "sdxl"
    for name, matrix in result["matrices"].items():
        cells = [v for row in matrix for v in row if v is not None]
        assert cells and all(math.isfinite(v) for v in cells), f"{method}: {name} has no finite scores: {matrix}"
    from PIL import Image

    images = sorted((out / "images").rglob("*.png"))
    assert images and all(Image.open(p).size == (RESOLUTION, RESOLUTION) for p in images)
    assert all(np.ptp(np.asarray(Image.open(p))) > 0 for p in images), f"{method}: a flat image"
    peaks = [t["peak_cuda_mb"] for t in result["tasks"]]
    assert all(p and p > 5000 for p in peaks), f"{method}: peak GPU memory not recorded: {peaks}"
    figure({"method": method, "model": "sdxl-random", "resolution": RESOLUTION, "run_s": round(seconds, 1),
             "train_s": [t["train_seconds"] and round(t["train_seconds"], 2) for t in result["tasks"]],
             "eval_s": [round(t["eval_seconds"], 2) for t in result["tasks"]],
             "peak_cuda_mb": [round(p) for p in peaks], "images": len(images)})
