"""Concept neglect: does an image asking for several learned concepts show every one of them?

The box-conditioned concept-neglect rate (CNR, ``baselines-and-metrics.md`` §2.7):

- every multi-concept prompt gives one region box per concept; an object concept is *present* when its box
  looks like the concept: the cosine between the image feature of the box, isolated at the scale of the
  references (:func:`isolate_box`), and the concept's prototype (the normalised mean feature of its reference
  images) reaches the threshold. A style concept uses the whole image;
- the threshold is calibrated once per prompt, concept and scorer, independent of any method, on the geometry
  it tests: the 95th percentile of the same similarity over the same box of base-model images of the same
  prompt with class words ("a ball on the left and a box on the right"). A present concept must look more
  like the personal concept, there, than 95% of generic instances of its class. (Thresholds from whole
  single-object images, tested on crops magnified 4×, called even perfect renders neglected.);
- ``cnr`` is the fraction of images that miss at least one requested concept; ``miss_rate`` is per concept,
  and ``min_sim`` (the minimum over requested concepts of that similarity, averaged) is a continuous
  companion.

The functions here are pure (features in, numbers out); :func:`calibrate_thresholds` generates the
calibration images and caches the thresholds on disk, keyed by everything they depend on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILE = 95.0
#: how thresholds are calibrated (part of the cache key): per prompt, on boxes of its class-word images, isolated
CALIBRATION_RULE = "prompt-box-isolated"


def prototype(reference_features: np.ndarray) -> np.ndarray:
    """The normalised mean of L2-normalised reference features."""
    f = np.asarray(reference_features, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True).clip(min=1e-12)
    mean = f.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def similarity(features: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Cosine of each feature row with a prototype."""
    f = np.asarray(features, dtype=np.float64)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True).clip(min=1e-12)
    return f @ np.asarray(proto, dtype=np.float64)


def presence_threshold(calibration_similarities: Sequence[float], percentile: float = PERCENTILE) -> float:
    """The ``percentile``-th percentile of the base model's class-word similarities."""
    values = np.asarray(calibration_similarities, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot calibrate a presence threshold from no calibration images")
    return float(np.percentile(values, percentile))


def box_pixels(box, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixel bounds of a normalised (y0, x0, y1, x1) box, rounded outwards, at least
    one pixel wide and high, inside the image."""
    from cifc_bench.api import Box

    return (box if isinstance(box, Box) else Box(*box)).pixels(height, width)


def crop_box(image, box) -> Any:
    """The region of a normalised (y0, x0, y1, x1) box, at least one pixel wide and high."""
    w, h = image.size
    top, left, bottom, right = box_pixels(box, h, w)
    return image.crop((left, top, right, bottom))


@dataclass(frozen=True)
class NeglectScores:
    """Per image and requested concept: similarity and presence, shape (n_images, n_concepts)."""

    similarity: np.ndarray
    present: np.ndarray

    @property
    def neglected(self) -> np.ndarray:
        """Per image: True when at least one requested concept is missing."""
        return ~self.present.all(axis=1)

    @property
    def cnr(self) -> float:
        return float(self.neglected.mean())

    @property
    def miss_rate(self) -> np.ndarray:
        return 1.0 - self.present.mean(axis=0)

    @property
    def min_sim(self) -> float:
        return float(self.similarity.min(axis=1).mean())


def score_presence(similarities: np.ndarray, thresholds: Sequence[float]) -> NeglectScores:
    """Presence of each requested concept: its similarity reaches its threshold."""
    sims = np.atleast_2d(np.asarray(similarities, dtype=np.float64))
    thr = np.asarray(thresholds, dtype=np.float64)
    if sims.shape[1] != thr.shape[0]:
        raise ValueError(f"{sims.shape[1]} concepts per image but {thr.shape[0]} thresholds")
    return NeglectScores(similarity=sims, present=sims >= thr)


def isolate_box(image, box) -> Any:
    """The image with everything outside ``box`` painted in the median colour of the box's edge pixels: the
    region keeps its place and scale, as in the references, where a crop would be magnified by the scorer's
    resizing (a 15×20 box of a 32-pixel picture 4.3×, its references 2×)."""
    from PIL import Image

    px = np.asarray(image.convert("RGB"))
    top, left, bottom, right = box_pixels(box, *px.shape[:2])
    inside = px[top:bottom, left:right]
    edge = np.concatenate([inside[0], inside[-1], inside[:, 0], inside[:, -1]])
    out = np.empty_like(px)
    out[:] = np.median(edge, axis=0).round().astype(px.dtype)
    out[top:bottom, left:right] = inside
    return Image.fromarray(out)


def concept_regions(images: Sequence, boxes: Sequence | None, kinds: Sequence[str]) -> list[list]:
    """Per concept, the images to score: its box isolated at native scale for objects, the whole image for
    styles (and for every concept of a prompt without boxes)."""
    out = []
    for k, kind in enumerate(kinds):
        if kind == "style" or not boxes:
            out.append(list(images))
        else:
            out.append([isolate_box(im, boxes[k]) for im in images])
    return out


def neglect_similarities(scorer, images: Sequence, boxes, kinds: Sequence[str],
                         prototypes: Sequence[np.ndarray]) -> np.ndarray:
    """(n_images, n_concepts) similarities of each concept's region to the concept's prototype."""
    regions = concept_regions(images, boxes, kinds)
    cols = [similarity(scorer.encode_images(reg), proto) for reg, proto in zip(regions, prototypes, strict=True)]
    return np.stack(cols, axis=1)


# ----------------------------------------------------------------------------------------------------------
# Calibration: base-model images of each multi-concept prompt with class words, generated once and cached.

def class_word_prompt(prompt: str, concepts: Sequence) -> str:
    """The multi-concept prompt with every concept's tokens replaced by its class word."""
    for concept in concepts:
        prompt = concept.to_class_words(prompt)
    return prompt


def calibration_seed(protocol: str, concept: str, k: int) -> int:
    from cifc_bench.core.seeding import derive_seed

    return derive_seed("cnr-calibration", protocol, concept, k)


def weights_fingerprint(*modules) -> str:
    """A digest of the modules' parameters (names, shapes and leading values): re-trained weights under the
    same model name must not reuse stale thresholds."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(f"{name}{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def calibration_key(protocol: str, protocol_version: str, model: str, scorer: str, settings, n_images: int,
                    percentile: float = PERCENTILE, fingerprint: str = "") -> str:
    """What the thresholds depend on, hashed: the cache file name."""
    parts = [protocol, protocol_version, model, scorer, settings.resolution, settings.num_inference_steps,
             settings.guidance_scale, settings.negative_prompt, n_images, percentile, fingerprint]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def calibrate_thresholds(bundle, scorer, sequence, settings, n_images: int, model_name: str, cache: Path | None,
                         percentile: float = PERCENTILE, ranks=None) -> dict[str, Any]:
    """{"thresholds": [{concept: τ} per multi-concept prompt], "n_images": ..., "key": ...}: for each prompt,
    ``n_images`` base-model images of it with class words, and per concept the ``percentile`` of its box's
    similarity to the concept's prototype.

    Must run before any method changes ``bundle``. The result is written to (and read back from)
    ``cache/<key>.json``, so it is computed once per protocol, model, scorer and sampler setting. Under a
    launcher (``ranks``, :class:`cifc_bench.core.distributed.Ranks`) the image batches are dealt out among the
    processes and rank 0 scores them, as one process would.
    """
    from cifc_bench.core.distributed import SINGLE
    from cifc_bench.core.images import list_images, load_rgb
    from cifc_bench.core.progress import progress
    from cifc_bench.core.results import write_json_atomic
    from cifc_bench.diffusion.sampling import generate_batched

    ranks = ranks or SINGLE
    fingerprint = weights_fingerprint(bundle.unet, bundle.text_encoder, scorer.model)
    key = calibration_key(sequence.name, sequence.version, model_name, scorer.name, settings, n_images, percentile,
                          f"{fingerprint}|{CALIBRATION_RULE}")
    path = Path(cache) / f"{key}.json" if cache else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    prompts = list(sequence.multi_concept_prompts)
    thresholds: list[dict[str, float]] = [{} for _ in prompts]
    spread: list[dict[str, dict]] = [{} for _ in prompts]
    protos: dict[str, np.ndarray] = {}
    batches = [(q, start) for q in range(len(prompts)) for start in range(0, n_images, settings.batch_size)]
    owner = {b: k % ranks.count for k, b in enumerate(batches)}  # dealt over all prompts, gathered per prompt
    for q in progress(range(len(prompts)), desc="calibrate presence thresholds (base-model images, once per setting)"):
        m = prompts[q]
        concepts = [sequence.concept(c) for c in m.concepts]
        mine = {}
        for start in range(0, n_images, settings.batch_size):
            if owner[(q, start)] == ranks.index:
                seeds = [calibration_seed(sequence.name, f"q{q}", k)
                         for k in range(start, min(start + settings.batch_size, n_images))]
                mine[start] = generate_batched(bundle, [class_word_prompt(m.prompt, concepts)] * len(seeds), seeds,
                                               settings)
        parts = ranks.gather(mine)
        if not ranks.main:
            continue
        shares = {start: ims for part in parts for start, ims in part.items()}
        images = [im for start in sorted(shares) for im in shares[start]]
        for c in concepts:
            if c.name not in protos:
                protos[c.name] = prototype(scorer.encode_images([load_rgb(p) for p in list_images(c.image_dir)]))
        sims = neglect_similarities(scorer, images, m.boxes, [c.kind for c in concepts],
                                    [protos[c.name] for c in concepts])
        for k, c in enumerate(concepts):
            thresholds[q][c.name] = presence_threshold(sims[:, k], percentile)
            spread[q][c.name] = {"mean": float(sims[:, k].mean()), "max": float(sims[:, k].max())}
    out = {"key": key, "protocol": sequence.name, "model": model_name, "scorer": scorer.name,
           "weights_fingerprint": fingerprint, "rule": CALIBRATION_RULE, "n_images": n_images,
           "percentile": percentile, "thresholds": thresholds, "calibration_similarity": spread}
    if path is not None and ranks.main:
        write_json_atomic(path, out)
    return ranks.broadcast(out)


def prompt_thresholds(calibration: dict[str, Any], q: int, concepts: Sequence[str]) -> list[float]:
    """Prompt ``q``'s thresholds in concept order; results calibrated by the earlier rule (one threshold per
    concept, from whole class-word images) keep theirs."""
    thr = calibration["thresholds"]
    return [thr[q][c] if isinstance(thr, list) else thr[c] for c in concepts]
