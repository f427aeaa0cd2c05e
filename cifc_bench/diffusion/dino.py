"""``ia_dino``: image alignment with DINO ViT-S/16 CLS features, as in the DreamBooth and Custom Diffusion
evaluations (resize 256, centre crop 224, ImageNet normalisation; mean pairwise cosine).

Weights come through timm's pretrained mechanism (``vit_small_patch16_224.dino``, from the hub on first use,
then cached). ``tiny-random`` is a two-layer ViT of the same family with random weights, saved once and loaded
through the same ``pretrained=`` path, for tests and smoke runs; its numbers mean nothing::

    dino = load_dino("dino-vits16")
    ia_dino = image_alignment(dino.encode_images(generated), dino.encode_images(references))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifc_bench.core.data import cache_dir
from cifc_bench.diffusion.scoring import ImageEncoder

DEFAULT_DINO = "dino-vits16"
TINY_RANDOM = "tiny-random"
NAMED = {DEFAULT_DINO: "vit_small_patch16_224.dino"}
_TINY_ARCH = "vit_small_patch16_224"
_TINY_ARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DinoLoadError(RuntimeError):
    """DINO weights could not be loaded; the message says what to do."""


@dataclass
class DinoEncoder(ImageEncoder):
    """A frozen timm ViT whose forward returns the CLS feature (``num_classes=0``); ``metric`` names the image
    alignment it gives (``ia_dino``; ``ia_dinov2`` for DINOv2, ...)."""

    metric: str = "ia_dino"

    def image_forward(self, batch):
        return self.model(batch)


def dino_transform(crop: int = 224):
    """Resize the short side to 256/224 of the crop (bicubic), centre crop, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(round(crop * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_dino(spec: str = DEFAULT_DINO, device: str = "cpu"):
    """A registered image encoder (entry-point group ``cifc_bench.image_encoders``: ``dino-vits16``, timm's DINO
    ViT-S/16, and ``tiny-random``), ``package.module:function``, or ``timm:MODEL[:WEIGHTS_FILE]``. A registered
    encoder is a function ``(device) -> ImageEncoder``."""
    from cifc_bench.core.registry import IMAGE_ENCODERS, list_plugins, load_component

    if spec.startswith("timm:") and spec.count(":") in (1, 2):
        _, arch, *weights = spec.split(":")
        overlay = {"pretrained_cfg_overlay": {"file": weights[0]}} if weights else {}
        return timm_encoder(spec, arch, overlay, 224, device)
    known = list_plugins(IMAGE_ENCODERS)
    if spec not in known and ":" not in spec:
        raise DinoLoadError(f"unknown DINO model {spec!r}; registered: {', '.join(known) or 'none'} ({TINY_RANDOM!r} "
                            "is for smoke runs), or 'timm:MODEL' or 'timm:MODEL:/path/to/weights', or --dino none to "
                            "skip ia_dino")
    encoder = load_component(IMAGE_ENCODERS, spec, "image encoder")(device)
    encoder.name = spec
    return encoder


def dino_vits16(device: str = "cpu") -> DinoEncoder:
    """DINO ViT-S/16 through timm (entry point ``dino-vits16``)."""
    return timm_encoder(DEFAULT_DINO, NAMED[DEFAULT_DINO], {}, 224, device)


def tiny_random(device: str = "cpu") -> DinoEncoder:
    """A toy timm ViT with random weights, for smoke runs (entry point ``tiny-random``)."""
    overlay = {**_TINY_ARGS, "pretrained_cfg_overlay": {"file": str(tiny_weights())}}
    return timm_encoder(TINY_RANDOM, _TINY_ARCH, overlay, _TINY_ARGS["img_size"], device)


def timm_encoder(spec: str, arch: str, extra: dict[str, Any], crop: int, device: str = "cpu",
                 metric: str = "ia_dino") -> DinoEncoder:
    """A timm ViT returning its CLS feature, frozen, with DINO's preprocessing at ``crop`` pixels."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **extra}  # the CLS token after the final norm, as DINO returns
    try:
        model = timm.create_model(arch, pretrained=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise DinoLoadError(
            f"image encoder {spec!r} ({arch}) could not be loaded: {err}. Its weights come from the Hugging Face hub "
            "on first use; run once with network access so they are cached, give a local file as "
            "'timm:MODEL:/path/to/weights', or leave it out (--dino none; --image-encoders without it; the "
            "tiny-random encoders for a smoke run)."
        ) from err
    model.eval().requires_grad_(False).to(device)
    return DinoEncoder(name=spec, model=model, preprocess=dino_transform(crop), device=device, metric=metric)


def tiny_weights(seed: int = 0, arch: str = _TINY_ARCH, args: dict[str, Any] | None = None) -> Path:
    """Create (once) and return the weights file of a tiny random timm ViT (DINO's by default)."""
    import hashlib
    import json

    import timm
    import torch

    if args is None or (arch, args) == (_TINY_ARCH, _TINY_ARGS):
        args, tag = _TINY_ARGS, "vit"  # DINO's own toy: the file name it always had
    else:
        tag = f"{arch}-{hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:8]}"
    path = cache_dir() / "dino" / f"tiny-random-{tag}-seed{seed}.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=0, **args)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path
