"""The harness's shared sampler against diffusers' ``StableDiffusionPipeline``: same tiny model, scheduler
(DPM-Solver++), steps, guidance, batch and per-image generators.

Run with timing: ``pytest tests/benchmarks/test_sampler_vs_diffusers.py --benchmark-enable``. The harness
benchmark records ``ratio_to_diffusers`` (median over the pipeline's median) in ``extra_info`` and prints it.
The images are compared too: the sampler mirrors the pipeline, so they agree to the last rounding step.
"""

import numpy as np
import pytest
import torch

from cifc_bench.api import GenerationRequest, GenerationSettings

SETTINGS = GenerationSettings(resolution=32, num_inference_steps=10, guidance_scale=7.5, batch_size=8)
REQUESTS = [GenerationRequest(prompt=f"a photo of a dog number {i}", seed=i) for i in range(8)]
ROUNDS = 15


@pytest.fixture(scope="module")
def bundle():
    from cifc_bench.diffusion.models import load_bundle

    return load_bundle("tiny-random")


def _pipeline(bundle):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                                   unet=bundle.unet, scheduler=type(bundle.scheduler).from_config(bundle.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers(pipe):
    return pipe([r.prompt for r in REQUESTS], height=SETTINGS.resolution, width=SETTINGS.resolution,
                num_inference_steps=SETTINGS.num_inference_steps, guidance_scale=SETTINGS.guidance_scale,
                negative_prompt=[SETTINGS.negative_prompt] * len(REQUESTS),
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in REQUESTS]).images


def _harness(bundle):
    from cifc_bench.methods.zero_shot import ZeroShot

    return ZeroShot(bundle).generate(REQUESTS, SETTINGS)


@pytest.mark.benchmark(group="sampler-8-images")
def test_diffusers_pipeline(benchmark, record_ratio, bundle):
    images = benchmark.pedantic(_diffusers, args=(_pipeline(bundle),), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 8
    record_ratio(benchmark, "diffusers", "diffusers", "ratio_to_diffusers", "StableDiffusionPipeline")


@pytest.mark.benchmark(group="sampler-8-images")
def test_harness_sampler(benchmark, record_ratio, bundle):
    images = benchmark.pedantic(_harness, args=(bundle,), rounds=ROUNDS, warmup_rounds=1)
    assert len(images) == 8
    record_ratio(benchmark, "harness", "diffusers", "ratio_to_diffusers", "StableDiffusionPipeline")


def test_harness_sampler_draws_the_pipelines_images(bundle):
    ours = np.stack([np.asarray(im, dtype=int) for im in _harness(bundle)])
    theirs = np.stack([np.asarray(im, dtype=int) for im in _diffusers(_pipeline(bundle))])
    assert ours.shape == theirs.shape and np.ptp(ours) > 0
    assert np.abs(ours - theirs).max() <= 1, "the shared sampler must draw what StableDiffusionPipeline draws"
