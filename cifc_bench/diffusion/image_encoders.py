"""Image encoders stronger than DINO ViT-S/16 for image alignment, each giving its own ``ia_*`` metric beside
``ia_dino`` (``--image-encoders dinov2-vits14,dreamsim``):

- ``dinov2-vits14`` → ``ia_dinov2``: DINOv2 ViT-S/14 (timm ``vit_small_patch14_dinov2.lvd142m``), CLS feature
  after the final norm, at 224 px (resize 256, centre crop 224, ImageNet normalisation, as for DINO);
- ``dreamsim`` → ``ia_dreamsim``: DreamSim's ensemble (Fu et al., NeurIPS 2023: DINO ViT-B/16, CLIP ViT-B/16
  and OpenCLIP ViT-B/16 with its released LoRA), through the official ``dreamsim`` package
  (``pip install 'cifc-bench[dreamsim]'``): its embedding, 224 px without crop. Its distance is 1 − cos, so
  ``ia_dreamsim`` (the mean pairwise cosine, like every ``ia``) is 1 − the mean DreamSim distance.

Weights load from the local cache only when the hub cannot be reached; an empty cache gives an error naming the
download step. ``dinov2-tiny-random`` and ``dreamsim-tiny-random`` are toy models of the same families with
random weights, built offline, for tests and smoke runs; their numbers mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifc_bench.core.data import cache_dir
from cifc_bench.diffusion.dino import DinoEncoder, DinoLoadError, dino_transform, timm_encoder, tiny_weights

DINOV2_ARCH = "vit_small_patch14_dinov2.lvd142m"
_TINY_DINOV2 = {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2,
                "init_values": 1.0}  # LayerScale at 1: at its 1e-5 a random ViT would ignore the image
#: the files of DreamSim's ensemble in its cache (the ``dreamsim`` package's own list for ``ensemble``)
DREAMSIM_FILES = ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
                  "ensemble_lora")
_TINY_DREAMSIM_PARTS = ({"embed_dim": 32, "depth": 2, "num_heads": 2}, {"embed_dim": 24, "depth": 1, "num_heads": 2})


def dinov2_vits14(device: str = "cpu") -> DinoEncoder:
    """DINOv2 ViT-S/14 through timm at 224 px (entry point ``dinov2-vits14``; metric ``ia_dinov2``)."""
    return timm_encoder("dinov2-vits14", DINOV2_ARCH, {"img_size": 224}, 224, device, metric="ia_dinov2")


def dinov2_tiny_random(device: str = "cpu") -> DinoEncoder:
    """A toy DINOv2-family ViT with random weights (entry point ``dinov2-tiny-random``; metric ``ia_dinov2``)."""
    arch = DINOV2_ARCH.split(".")[0]
    overlay = {**_TINY_DINOV2, "pretrained_cfg_overlay": {"file": str(tiny_weights(0, arch, _TINY_DINOV2))}}
    return timm_encoder("dinov2-tiny-random", arch, overlay, _TINY_DINOV2["img_size"], device, metric="ia_dinov2")


@dataclass
class DreamSimEncoder(DinoEncoder):
    """DreamSim's embedding (its model's ``embed``: the backbones' features concatenated, mean-centred and
    normalised); ``metric`` is ``ia_dreamsim``."""

    metric: str = "ia_dreamsim"

    def image_forward(self, batch):
        return self.model.embed(batch)


def dreamsim_cache() -> Path:
    return cache_dir() / "dreamsim"


def dreamsim(device: str = "cpu") -> DreamSimEncoder:
    """DreamSim's ensemble from the official package and its cached weights (entry point ``dreamsim``)."""
    cache = dreamsim_cache()
    missing = [name for name in DREAMSIM_FILES if not (cache / name).exists()]
    download = (f"python -c \"from dreamsim import dreamsim; dreamsim(pretrained=True, device='cpu', "
                f"cache_dir='{cache}')\"")
    try:
        from dreamsim import dreamsim as build
    except ImportError as err:
        raise DinoLoadError(f"image encoder 'dreamsim' needs the dreamsim package: pip install 'cifc-bench[dreamsim]', "
                            f"then download its weights once with network access: {download}") from err
    if missing:
        raise DinoLoadError(f"image encoder 'dreamsim': its weights are not in {cache} (missing {', '.join(missing)}). "
                            f"Download them once with network access: {download}; or leave dreamsim out of "
                            "--image-encoders (dreamsim-tiny-random for a smoke run)")
    model, preprocess = build(pretrained=True, device=device, cache_dir=str(cache), dreamsim_type="ensemble")
    return DreamSimEncoder(name="dreamsim", model=model, preprocess=lambda image: preprocess(image)[0], device=device)


class _TinyEnsemble:
    """DreamSim's embedding rule over toy timm ViTs with random weights: each backbone's CLS feature,
    concatenated, mean-centred and normalised per image, as ``dreamsim``'s ``embed`` with ``normalize_embeds``."""

    def __init__(self, models: list[Any]) -> None:
        self.models = models

    def embed(self, batch):
        import torch

        feats = torch.cat([m(batch) for m in self.models], dim=-1)
        feats = feats - feats.mean(dim=-1, keepdim=True)
        return feats / feats.norm(dim=-1, keepdim=True)


def dreamsim_tiny_random(device: str = "cpu") -> DreamSimEncoder:
    """A toy DreamSim-style ensemble of two random timm ViTs (entry point ``dreamsim-tiny-random``)."""
    import timm

    arch, size = "vit_small_patch16_224", 32
    models = []
    for seed, part in enumerate(_TINY_DREAMSIM_PARTS):
        args = {"img_size": size, "patch_size": 8, **part}
        model = timm.create_model(arch, pretrained=True, num_classes=0, **args,
                                  pretrained_cfg_overlay={"file": str(tiny_weights(seed + 1, arch, args))})
        models.append(model.eval().requires_grad_(False).to(device))
    return DreamSimEncoder(name="dreamsim-tiny-random", model=_TinyEnsemble(models), preprocess=dino_transform(size),
                           device=device)
