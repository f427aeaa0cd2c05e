"""Evaluation cost beside generation: 64 images generated and written as the harness does, against generation
alone, and against the earlier synchronous writer (PNG level 6, each image read back from disk).

Run with timing: ``pytest tests/benchmarks/test_evaluation_overlap.py --benchmark-enable``. The harness
benchmark records ``ratio_to_generation`` (median time over generation alone's median) in ``extra_info`` and
prints it; so does the synchronous writer, for comparison. At the tiny model's 32 px a PNG is cheap; at
512 px on a GPU it is not (62 ms at level 6, measured in the GPU review, against 1.45 s per image of fp32
sampling on an H200, docs/guides/gpu.md), which the writer thread and the fast level hide.
"""

from types import SimpleNamespace

import pytest

from cifc_bench.api import GenerationRequest, GenerationSettings

SETTINGS = GenerationSettings(resolution=32, num_inference_steps=4, guidance_scale=7.5, batch_size=8)
REQUESTS = [GenerationRequest(prompt=f"a photo of a dog number {i}", seed=i) for i in range(64)]
ROUNDS = 5


@pytest.fixture(scope="module")
def method():
    from cifc_bench.methods.zero_shot import ZeroShot

    from cifc_bench.diffusion.models import load_bundle

    return ZeroShot(load_bundle("tiny-random"))


def _generate_all(method):
    return [im for k in range(0, len(REQUESTS), 8) for im in method.generate(REQUESTS[k : k + 8], SETTINGS)]


def _harness(method, root, counter):
    from cifc_bench.evaluation.image_cache import generate_cached

    counter[0] += 1
    ctx = SimpleNamespace(method=method, settings=SETTINGS, config=SimpleNamespace(method="base"),
                          generate=lambda requests: method.generate(requests, SETTINGS))
    pairs = [(r, f"{k:03d}.png") for k, r in enumerate(REQUESTS)]
    return generate_cached(ctx, pairs, root / f"round{counter[0]}", "bench")


def _synchronous(method, root, counter):
    """The writer before the overlap: PNG at the default level 6, written in line, then every image read back."""
    from cifc_bench.core.images import load_rgb

    counter[0] += 1
    folder = root / f"sync{counter[0]}"
    folder.mkdir(parents=True)
    for k, image in enumerate(_generate_all(method)):
        image.save(folder / f"{k:03d}.png", format="PNG")
    return [load_rgb(folder / f"{k:03d}.png") for k in range(len(REQUESTS))]


@pytest.mark.benchmark(group="evaluation-64-images")
def test_generation_alone(benchmark, record_ratio, method):
    images = benchmark.pedantic(_generate_all, args=(method,), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 64
    record_ratio(benchmark, "generation", "generation", "ratio_to_generation", "generation alone")


@pytest.mark.benchmark(group="evaluation-64-images")
def test_harness_generation_with_overlapped_writes(benchmark, record_ratio, method, tmp_path):
    images = benchmark.pedantic(_harness, args=(method, tmp_path, [0]), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 64 and len(list((tmp_path / "round1").glob("*.png"))) == 64
    record_ratio(benchmark, "harness", "generation", "ratio_to_generation", "generation alone")


@pytest.mark.benchmark(group="evaluation-64-images")
def test_synchronous_writer_before_the_overlap(benchmark, record_ratio, method, tmp_path):
    images = benchmark.pedantic(_synchronous, args=(method, tmp_path, [0]), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 64
    record_ratio(benchmark, "synchronous", "generation", "ratio_to_generation", "generation alone")
