"""Mixed precision, the way diffusers' training scripts do it: frozen weights in a low dtype, trainable
parameters and optimiser state in fp32, and the forward passes under ``torch.autocast``.

The harness casts the bundle (:func:`cast_frozen`) and runs every ``learn_task`` and ``generate`` inside
:func:`autocast`; a method only keeps what it trains in fp32 (:func:`fp32_trainable`) and steps its optimiser
through :func:`loss_scaler` (a no-op except in fp16, where small gradients would underflow without it)::

    cast_frozen(bundle, "bf16")
    with autocast(bundle.device, "bf16"):
        method.learn_task(task, budget)
"""

from __future__ import annotations

import contextlib

import torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: use one of {tuple(TORCH_DTYPES)}") from None


def cast_frozen(bundle, dtype: str):
    """The UNet and VAE in ``dtype``. The text encoder stays fp32: methods train rows of its token embedding
    (and Mix-of-Show a LoRA inside it), and it runs once per prompt, not at every denoising step."""
    from diffusers.utils import logging

    target = torch_dtype(dtype)
    level = logging.get_verbosity()
    logging.set_verbosity_error()  # diffusers warns on any cast, even when no module must stay fp32 (a list of [])
    try:
        for module in (bundle.unet, bundle.vae):
            if module is not None:
                if getattr(module, "_keep_in_fp32_modules", None):
                    raise ValueError(f"{type(module).__name__} keeps {module._keep_in_fp32_modules} in fp32; load it "
                                     "with from_pretrained(torch_dtype=...) instead of casting it")
                module.to(target)
    finally:
        logging.set_verbosity(level)
    return bundle


def autocast(device, dtype: str):
    """``torch.autocast`` on the device's type for a low ``dtype``; nothing for fp32 (TF32 covers CUDA)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(dtype))


def fp32_trainable(modules) -> None:
    """Every parameter of ``modules`` that requires a gradient becomes fp32 in place (the optimiser's master
    copy): diffusers' ``cast_training_params``, which frozen low-precision bundles need before an optimiser is
    built. Parameters keep their identity, so modules and optimisers that hold them stay valid."""
    from diffusers.training_utils import cast_training_params

    cast_training_params([m for m in modules if m is not None], dtype=torch.float32)


def loss_scaler(bundle) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only when the bundle's UNet is fp16; use it as
    ``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`` (plain steps when disabled)."""
    device = bundle.unet.device
    return torch.amp.GradScaler(device.type, enabled=bundle.unet.dtype == torch.float16)
