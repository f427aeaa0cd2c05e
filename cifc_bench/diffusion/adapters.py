"""Sampling from merged adapter weights: a LoRA left unmerged adds two small matrix products (and, with ten
stored adapters, ten) to every adapted layer of every UNet forward; merged, a forward costs what the base
model's does.

Inside :func:`merged_adapters` every active peft LoRA of a model is merged into its base layer, as peft merges
it (``W + Σ scaling · B A`` over the active adapters, with the weights ``set_adapters`` gave them); on leaving,
the base weights are restored from a saved copy, exactly (unmerging would subtract the product again, and
``W + Δ − Δ`` is not ``W`` in floating point). The images differ from unmerged sampling by float rounding
only (``tests/test_adapters.py``).
"""

from __future__ import annotations

import contextlib


def _active_lora_layers(model) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and not m.disable_adapters and not m.merged
            and any(a in m.lora_A for a in m.active_adapters)]


@contextlib.contextmanager
def merged_adapters(model):
    """Merge ``model``'s active LoRAs into its base weights for the block; restore them exactly after."""
    import torch

    layers = _active_lora_layers(model)
    saved = [(m, m.get_base_layer().weight.detach().clone()) for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.merge(adapter_names=[a for a in m.active_adapters if a in m.lora_A])
        yield
    finally:
        with torch.no_grad():
            for m, weight in saved:
                m.get_base_layer().weight.copy_(weight)
                m.merged_adapters = []


@contextlib.contextmanager
def mixed_adapter_batch(model, adapter_names: list[str]):
    """Inside the block, sample k of a batch goes through ``model``'s LoRA ``adapter_names[k]`` alone (peft's
    mixed-adapter batch, which a diffusers model does not expose): several LoRAs' predictions in one call."""
    from peft.tuners.lora import LoraLayer

    def inject(module, args, kwargs):
        return args, {**kwargs, "adapter_names": adapter_names}

    handles = [m.register_forward_pre_hook(inject, with_kwargs=True) for m in model.modules()
               if isinstance(m, LoraLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
