"""Retention of the base model: what learning concepts does to prompts that name none of them.

A protocol's ``retention`` section lists generic prompts (no learned token). Before the method touches the model,
the base model draws each with fixed seeds (``images/base/_retention``); after every evaluated task the method
draws the same prompts with the same seeds. Per image:

- ``drift``: 1 − the scorer's cosine between the image and the base model's image of the same prompt and seed
  (0: the base model's own picture; it grows as the method moves the model away from it);
- every metric of ``retention.metrics`` (default ``ta``, the prompts' CLIPScore; on ``synth10`` also the exact
  ``class_acc`` and ``context_acc``), applied to the generic images as a :class:`~cifc_bench.api.ConceptImages`
  without a concept.

Each gets a row over tasks and the summaries ``final``, ``first`` (the first evaluated state), ``change`` (final
− first) and ``worst`` (the largest drift, the lowest of the others).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from cifc_bench.api import ConceptImages, TaskSequence
from cifc_bench.core.images import load_rgb
from cifc_bench.evaluation.context import RunContext
from cifc_bench.evaluation.eval_requests import retention_dir, retention_requests

DRIFT = "drift"
LOWER_IS_BETTER = (DRIFT,)


def new_retention(sequence: TaskSequence) -> dict[str, Any] | None:
    """The retention part of a result: the prompts, and per metric a row over tasks and per-image values."""
    if not sequence.retention_prompts:
        return None
    metrics = [DRIFT, *sequence.retention_metrics]
    T = len(sequence.tasks)
    return {"prompts": list(sequence.retention_prompts), "images_per_prompt": sequence.retention_images,
            "metrics": metrics, "rows": {m: [None] * T for m in metrics}, "per_image": {m: {} for m in metrics},
            "summary": {}}


def generate_base_images(ctx: RunContext, bundle) -> None:
    """The base model's retention images, drawn before any method is built on ``bundle`` (a resumed run finds
    them on disk and draws none)."""
    # the base model under the shared sampler, as `base` draws
    from cifc_bench.evaluation.image_cache import generate_cached
    from cifc_bench.methods.zero_shot import ZeroShot

    if ctx.sequence.retention_prompts:
        generate_cached(dataclasses.replace(ctx, method=ZeroShot(bundle)), retention_requests(ctx.sequence),
                        retention_dir(ctx.run_dir, None), "generate retention@base")


def evaluate_retention(ctx: RunContext, j: int, part: dict[str, Any], references: dict[str, np.ndarray]) -> None:
    """Generate (or reuse) the retention images of model state ``j``, score them and fill column ``j``."""
    from cifc_bench.evaluation.image_cache import generate_cached

    pairs = retention_requests(ctx.sequence)
    images = generate_cached(ctx, pairs, retention_dir(ctx.run_dir, j), f"generate retention@{j}")
    if "retention:base" not in references:
        base = [load_rgb(retention_dir(ctx.run_dir, None) / name) for _, name in pairs]
        references["retention:base"] = ctx.scorer.encode_images(base)
    prompts = tuple(r.prompt for r, _ in pairs)
    sample = ConceptImages(concept=None, images=tuple(images), prompts=prompts,
                           features=ctx.scorer.encode_images(images), reference_features=references["retention:base"],
                           text_features=ctx.scorer.encode_texts(list(prompts)))
    cosine = (sample.features * sample.reference_features).sum(-1)
    values = {DRIFT: np.clip(1.0 - cosine, 0.0, 2.0).tolist()}  # the clip takes float rounding off the base's own 0
    rows = {DRIFT: float(np.mean(values[DRIFT]))}
    for name in part["metrics"][1:]:
        fn = ctx.metric_fns[name]
        values[name] = [_finite(fn(sample.image(k))) for k in range(len(images))]
        rows[name] = _finite(fn(sample))
    for name, v in rows.items():
        part["rows"][name][j] = v
        part["per_image"][name][str(j)] = values[name]
    part["summary"] = retention_summary(part)


def _finite(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def retention_summary(part: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per metric: final, first (the first evaluated state), change (final − first) and worst."""
    out = {}
    for name, row in part["rows"].items():
        done = [v for v in row if v is not None]
        if not done:
            continue
        worst = max(done) if name in LOWER_IS_BETTER else min(done)
        out[name] = {"final": done[-1], "first": done[0], "change": done[-1] - done[0], "worst": worst}
    return out
