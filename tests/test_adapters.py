"""Sampling from merged adapter weights (``cifc_bench.diffusion.adapters.merged_adapters``): the images of an unmerged
model to float rounding, the base weights restored bit for bit, and a UNet forward with ten stored LoRAs that
runs exactly the base model's operations."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cifc_bench.api import GenerationRequest, GenerationSettings
from cifc_bench.diffusion.adapters import merged_adapters
from cifc_bench.diffusion.sampling import generate_requests

SETTINGS = GenerationSettings(resolution=32, num_inference_steps=4, guidance_scale=7.5, batch_size=4)
REQUESTS = [GenerationRequest(prompt=f"a photo of a <c{i}a> <c{i}b> on the beach", seed=i) for i in range(4)]


def _lora_m():
    from cifc_bench.testing import lora_m_with_random_adapters

    return lora_m_with_random_adapters(10)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _forward_ops(unet) -> list[str]:
    x, t, ctx = torch.zeros(1, 4, 8, 8), torch.tensor([10]), torch.zeros(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad(), _CountOps() as count:
        unet(x, t, encoder_hidden_states=ctx)
    return count.ops


def test_ten_merged_loras_run_the_base_models_operations_and_restore_its_weights_exactly():
    from cifc_bench.diffusion.models import load_bundle

    method = _lora_m()
    unet = method.bundle.unet
    unet.set_adapters(method.adapters, weights=method.merge_weights())
    base_ops = _forward_ops(load_bundle("tiny-random").unet)
    unmerged = _forward_ops(unet)
    before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" not in n}
    with merged_adapters(unet):
        merged = _forward_ops(unet)
    assert len(unmerged) > len(base_ops)  # ten adapters' products in every adapted layer
    assert merged == base_ops  # merged: the same aten operations as the base model, in the same order
    assert all(torch.equal(before[n], p) for n, p in unet.named_parameters() if "lora_" not in n)


def test_merged_sampling_gives_the_unmerged_images_to_float_rounding():
    method = _lora_m()
    method.bundle.unet.set_adapters(method.adapters, weights=method.merge_weights())
    unmerged = [np.asarray(im, dtype=np.int16) for im in generate_requests(method.bundle, REQUESTS, SETTINGS)]
    merged = [np.asarray(im, dtype=np.int16) for im in method.generate(REQUESTS, SETTINGS)]
    assert max(np.abs(a - b).max() for a, b in zip(unmerged, merged, strict=True)) <= 2
    again = [np.asarray(im, dtype=np.int16) for im in generate_requests(method.bundle, REQUESTS, SETTINGS)]
    assert all(np.array_equal(a, b) for a, b in zip(unmerged, again, strict=True))  # the adapters are back
