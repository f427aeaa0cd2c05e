"""Image and text feature extractors behind the IA/TA metrics, all built through open_clip.

``clip-vit-b32`` is the paper's scorer: OpenAI CLIP ViT-B/32, bicubic resize to 224 and centre crop, CLIP
normalisation (open_clip's own transform for that model, identical to the CIDM evaluator's). ``tiny-random``
is an open_clip ``CLIP`` of the same family at toy size, saved once and re-loaded through the same
``pretrained=`` path, for smoke runs and tests::

    scorer = load_scorer("tiny-random")
    ia = image_alignment(scorer.encode_images(generated), scorer.encode_images(references))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench.core.data import cache_dir

DEFAULT_SCORER = "clip-vit-b32"
TINY_RANDOM = "tiny-random"
_TINY_ARCH = "cifc-tiny-random-clip"
_TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# name -> (open_clip architecture, pretrained tag or file)
NAMED = {DEFAULT_SCORER: ("ViT-B-32", "openai")}


class ScorerLoadError(RuntimeError):
    """A scorer's weights could not be loaded; the message says what to do."""


@dataclass
class ImageEncoder:
    """A frozen image model plus its preprocessing; returns L2-normalised numpy features."""

    name: str
    model: Any
    preprocess: Any
    device: str = "cpu"
    batch_size: int = 64

    def image_forward(self, batch):
        return self.model.encode_image(batch.to(next(self.model.parameters()).dtype))

    def encode_images(self, images: Sequence) -> np.ndarray:
        return encode_image_batches(self.image_forward, self.preprocess, images, self.device, self.batch_size)


@dataclass
class Scorer(ImageEncoder):
    """Frozen open_clip encoders plus their preprocessing; returns L2-normalised numpy features."""

    tokenizer: Any = None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        feats = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
                f = self.model.encode_text(tokens).float()
                feats.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        return np.concatenate(feats) if feats else np.zeros((0, 0))


def encode_image_batches(forward, preprocess, images: Sequence, device: str, batch_size: int) -> np.ndarray:
    """L2-normalised features of PIL images, ``batch_size`` at a time, without gradients (every image scorer)."""
    import torch

    feats = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
            f = forward(batch.to(device)).float()
            feats.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
    return np.concatenate(feats) if feats else np.zeros((0, 0))


def load_scorer(spec: str = DEFAULT_SCORER, device: str = "cpu") -> Scorer:
    """A registered scorer (entry-point group ``cifc_bench.scorers``: ``clip-vit-b32``, ``tiny-random``, and
    whatever plugins add), ``package.module:function``, or ``open_clip:ARCH:PRETRAINED`` (a tag or a weights
    file). A registered scorer is a function ``(device) -> Scorer``."""
    from cifc_bench.core.registry import SCORERS, list_plugins, load_component

    if spec.startswith("open_clip:") and spec.count(":") == 2:
        _, arch, pretrained = spec.split(":")
        return open_clip_scorer(spec, arch, pretrained, device)
    known = list_plugins(SCORERS)
    if spec not in known and ":" not in spec:
        raise ScorerLoadError(
            f"unknown scorer {spec!r}; registered: {', '.join(known) or 'none'} ({DEFAULT_SCORER!r} is the paper's "
            f"CLIP ViT-B/32, {TINY_RANDOM!r} is for smoke runs), or give 'open_clip:ARCH:PRETRAINED' (e.g. "
            "open_clip:ViT-B-32:openai) or 'package.module:function'"
        )
    scorer = load_component(SCORERS, spec, "scorer")(device)
    scorer.name = spec
    return scorer


def clip_vit_b32(device: str = "cpu") -> Scorer:
    """The paper's scorer: OpenAI CLIP ViT-B/32 (entry point ``clip-vit-b32``)."""
    arch, pretrained = NAMED[DEFAULT_SCORER]
    return open_clip_scorer(DEFAULT_SCORER, arch, pretrained, device)


def tiny_random(device: str = "cpu") -> Scorer:
    """A toy open_clip ``CLIP`` with random weights, for smoke runs (entry point ``tiny-random``)."""
    return open_clip_scorer(TINY_RANDOM, _TINY_ARCH, str(_tiny_random_weights()), device)


def scorer_precision(device: str) -> str:
    """fp16 on CUDA, fp32 elsewhere: what the paper's evaluator gets from OpenAI's ``clip.load``, which turns the
    weights to fp16 on a GPU (and the images with them) and keeps them fp32 on a CPU (spec §E)."""
    return "fp16" if str(device).startswith("cuda") else "fp32"


def open_clip_scorer(spec: str, arch: str, pretrained: str, device: str = "cpu") -> Scorer:
    """An open_clip model and its own preprocessing as a frozen scorer, in :func:`scorer_precision`; a clear
    error when weights are missing."""
    import open_clip

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=device,
                                                                     precision=scorer_precision(device))
    except (RuntimeError, OSError, ValueError) as err:
        raise ScorerLoadError(
            f"scorer {spec!r} ({arch}, pretrained={pretrained!r}) could not be loaded: {err}. Its weights come "
            "from the Hugging Face hub on first use; run once with network access so they are cached, "
            "or give a local file as 'open_clip:ARCH:/path/to/weights.pt', or use --scorer tiny-random."
        ) from err
    model.eval().requires_grad_(False)
    return Scorer(name=spec, model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch), device=device)


def register_open_clip_config(name: str, config: dict) -> str:
    """Make an open_clip architecture known by ``name`` from a config dict (open_clip reads config files)."""
    import open_clip

    if name not in open_clip.list_models():
        from cifc_bench.core.results import write_text_atomic

        path = cache_dir() / "scorers" / "configs" / f"{name}.json"
        text = json.dumps(config)
        if not path.is_file() or path.read_text() != text:
            # whole or not at all: the concurrent runs of a sweep register the same file, and a plain write
            # let one process read it while another had it truncated (a JSONDecodeError that failed the run)
            write_text_atomic(path, text)
        open_clip.add_model_config(path)  # this file only, not a scan of a folder other processes write into
    return name


def _tiny_random_weights(seed: int = 0) -> Path:
    """Create (once) and return the tiny random scorer's weights file."""
    import os

    import open_clip
    import torch

    register_open_clip_config(_TINY_ARCH, _TINY_CFG)
    path = cache_dir() / "scorers" / f"{_TINY_ARCH}-seed{seed}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = open_clip.create_model(_TINY_ARCH, pretrained=None)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return path
