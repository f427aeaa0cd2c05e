"""A protocol's region prompts reach the region-aware methods: CIDM's context-controllable synthesis and
Mix-of-Show's regional sampler draw other images with them than with the default "a <phrase>" per box, and
CIDM's ``ccs=false`` ablation prompts the request plainly."""

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from cifc_bench.api import GenerationSettings, TrainBudget
from cifc_bench.core.protocol import load_protocol
from cifc_bench.core.registry import load_method
from cifc_bench.diffusion.models import load_bundle
from cifc_bench.evaluation.eval_requests import multi_requests
from cifc_bench.testing import make_tiny_protocol

REGIONS = ["a <t0a> <t0b> sitting on the grass", "a <t1a> <t1b> sitting on the grass"]
SETTINGS = GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=2)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    path = make_tiny_protocol(root, n_concepts=3)
    raw = yaml.safe_load(path.read_text())
    raw["multi_concept_prompts"][0]["region_prompts"] = REGIONS
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_protocol(str(path)).bind(root / "tiny-data")


def _learned(name, sequence, **args):
    torch.manual_seed(0)
    method = load_method(name)(load_bundle("tiny-random"), **args)
    for task in sequence.tasks[:2]:
        method.learn_task(task, TrainBudget(steps=2, batch_size=2, resolution=32, seed=task.index))
    return method


def _arrays(images):
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize("name", ["cidm", "mix-of-show"])
def test_a_protocols_region_prompts_change_the_region_aware_methods_images(name, sequence):
    method = _learned(name, sequence)
    requests = [r for r, _ in multi_requests(sequence, 0, 2)]
    assert all(r.region_prompts == tuple(REGIONS) for r in requests)
    default = [dataclasses.replace(r, region_prompts=None) for r in requests]
    with_regions, without = _arrays(method.generate(requests, SETTINGS)), _arrays(method.generate(default, SETTINGS))
    assert all(not np.array_equal(a, b) for a, b in zip(with_regions, without, strict=True))
    again = _arrays(method.generate(requests, SETTINGS))
    assert all(np.array_equal(a, b) for a, b in zip(with_regions, again, strict=True))  # not noise: deterministic


def test_cidm_without_ccs_prompts_a_boxed_request_plainly(sequence):
    requests = [r for r, _ in multi_requests(sequence, 0, 2)]
    plain = [dataclasses.replace(r, boxes=None, region_prompts=None) for r in requests]
    ablated = _learned("cidm", sequence, ccs=False)
    off = _arrays(ablated.generate(requests, SETTINGS))
    assert all(np.array_equal(a, b) for a, b in zip(off, _arrays(ablated.generate(plain, SETTINGS)), strict=True))
    on = _arrays(_learned("cidm", sequence).generate(requests, SETTINGS))
    assert all(not np.array_equal(a, b) for a, b in zip(on, off, strict=True))
