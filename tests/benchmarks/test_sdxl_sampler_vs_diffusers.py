"""The harness's shared sampler on SDXL against diffusers' ``StableDiffusionXLPipeline`` (issue 38's target: at
most 1.05 × the pipeline): the same tiny ``sdxl-tiny-random``, Euler, steps, guidance, batch and generators.

Run with timing: ``pytest tests/benchmarks/test_sdxl_sampler_vs_diffusers.py --benchmark-enable``; the harness
benchmark records ``ratio_to_diffusers`` (median over the pipeline's median). ``tests/test_sdxl.py`` checks that
both draw the same images.
"""

import pytest

from cifc_bench.api import GenerationRequest, GenerationSettings

SETTINGS = GenerationSettings(resolution=32, num_inference_steps=10, guidance_scale=5.0, batch_size=4)
REQUESTS = [GenerationRequest(prompt=f"a photo of a dog number {i}", seed=i) for i in range(4)]
ROUNDS = 15


@pytest.fixture(scope="module")
def bundle():
    from cifc_bench.diffusion.models import load_bundle

    return load_bundle("sdxl-tiny-random")


@pytest.mark.benchmark(group="sdxl-sampler-4-images")
def test_sdxl_pipeline(benchmark, record_ratio, bundle):
    from cifc_bench.testing import sdxl_pipeline_images

    images = benchmark.pedantic(sdxl_pipeline_images, args=(bundle, REQUESTS, SETTINGS), rounds=ROUNDS,
                                warmup_rounds=1)
    assert len(images) == 4
    record_ratio(benchmark, "sdxl-diffusers", "sdxl-diffusers", "ratio_to_diffusers", "StableDiffusionXLPipeline")


@pytest.mark.benchmark(group="sdxl-sampler-4-images")
def test_sdxl_harness_sampler(benchmark, record_ratio, bundle):
    from cifc_bench.methods.zero_shot import ZeroShot

    images = benchmark.pedantic(ZeroShot(bundle).generate, args=(REQUESTS, SETTINGS), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 4
    record_ratio(benchmark, "sdxl-harness", "sdxl-diffusers", "ratio_to_diffusers", "StableDiffusionXLPipeline")
