"""Scoring one model state: every learned concept's images with every metric of the run, the multi-concept
images' neglect, and the tracks' outputs, filling row j of the result's matrices. Divergence shows here as
flat images and fails the run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cifc_bench.api import Concept, ConceptImages, DivergenceError
from cifc_bench.core.images import list_images, load_rgb, save_atomic
from cifc_bench.evaluation.context import DINO_METRIC, RunContext
from cifc_bench.evaluation.eval_requests import concept_requests, multi_requests
from cifc_bench.evaluation.image_cache import generate_cached, image_dir, multi_dir, track_pairs
from cifc_bench.evaluation.retention import evaluate_retention
from cifc_bench.evaluation.tracks import track_dir, track_input_dir, track_sample


def check_images(images, concept: Concept, j: int) -> None:
    """Every image of a concept one flat colour (black, when the weights are NaN) means sampling broke."""
    flat = [np.ptp(np.asarray(im)) == 0 for im in images]
    if images and all(flat):
        raise DivergenceError(f"after task {j + 1}, every one of the {len(images)} images of concept {concept.name!r} "
                              "is a single flat colour: the model no longer samples (non-finite weights or a "
                              "collapsed model). Lower the learning rates, or check the method's generate()")


def evaluate_task(ctx: RunContext, result: dict[str, Any], j: int, references: dict[str, np.ndarray]) -> None:
    """Fill row j of every matrix (and of the neglect matrices): all concepts learned so far, scored."""
    last = len(ctx.sequence.tasks) - 1
    for concept in ctx.sequence.concepts[: j + 1]:
        i = ctx.sequence.concepts.index(concept)
        images: dict[str, list] | None = {} if i == j or j == last else None  # the cells learning, final read
        scores = evaluate_concept(ctx, j, concept, references, images)
        for m, v in scores.items():
            result["matrices"][m][j][i] = v
        for m, values in (images or {}).items():
            result.setdefault("per_image", {}).setdefault(m, {})[f"{j},{i}"] = values
    if result.get("neglect"):
        evaluate_neglect(ctx, j, result["neglect"], references)
    if result.get("tracks"):
        evaluate_tracks(ctx, j, result["tracks"], references)
    if result.get("retention"):
        evaluate_retention(ctx, j, result["retention"], references)


def evaluate_concept(ctx: RunContext, j: int, concept: Concept, references: dict[str, np.ndarray],
                     per_image: dict[str, list] | None = None) -> dict[str, float]:
    """Generate (or reuse) concept images for model state j and score them with every metric; with a
    ``per_image`` dict, also each image's own score per metric (the leaderboard's interval units)."""
    cfg = ctx.config
    folder = image_dir(ctx.run_dir, j, concept.name)
    pairs = concept_requests(ctx.sequence.name, concept, cfg.prompts_per_concept, cfg.images_per_prompt)
    generated = generate_cached(ctx, pairs, folder, f"generate {concept.name}@{j}")
    check_images(generated, concept, j)
    reference_features(ctx, concept, references)
    class_prompts = [concept.to_class_words(r.prompt) for r, _ in pairs]
    dino = {}
    if ctx.dino is not None:
        dino = {"dino_features": ctx.dino.encode_images(generated),
                "dino_reference_features": training_features(references, DINO_METRIC, ctx.dino, concept)}
    sample = ConceptImages(concept=concept, images=tuple(generated), prompts=tuple(class_prompts),
                           features=ctx.scorer.encode_images(generated), reference_features=references[concept.name],
                           text_features=ctx.scorer.encode_texts(class_prompts), **dino,
                           encoded={m: e.encode_images(generated) for m, e in ctx.encoders.items()},
                           encoded_references={m: training_features(references, m, e, concept)
                                               for m, e in ctx.encoders.items()})
    scores = {name: float(ctx.metric_fns[name](sample)) for name in ctx.metrics}
    if per_image is not None:
        per_image.update(image_scores(ctx, sample))
    return {k: (None if math.isnan(v) else v) for k, v in scores.items()}


def training_features(references: dict[str, np.ndarray], metric: str, encoder, concept: Concept) -> np.ndarray:
    """The concept's training images under ``encoder`` (the one behind ``metric``), encoded once per run."""
    key = f"{metric}:{concept.name}"
    if key not in references:
        references[key] = encoder.encode_images([load_rgb(p) for p in list_images(concept.image_dir)])
    return references[key]


def image_scores(ctx: RunContext, sample: ConceptImages, names=None) -> dict[str, list[float | None]]:
    """Every metric (of ``names``, default the run's) of each image alone (None where a metric cannot score
    it, e.g. ``identity_acc`` on a known-style prompt). Their mean is the metric of a metric that averages over
    images (ia, ta, identity_acc); ``context_acc`` pools attributes over images, so its mean of images can
    differ slightly."""
    out = {}
    for name in ctx.metrics if names is None else names:
        values = [float(ctx.metric_fns[name](sample.image(k))) for k in range(len(sample.images))]
        out[name] = [None if math.isnan(v) else v for v in values]
    return out


def evaluate_neglect(ctx: RunContext, j: int, neglect: dict[str, Any], references: dict[str, np.ndarray]) -> None:
    """Generate (or reuse) the images of every multi-concept prompt whose concepts are all learned by task j,
    score the presence of each concept (box crop against its threshold), and fill row j of the neglect
    matrices. Per-image scores go to ``scores.json`` beside the images, for reports."""
    from cifc_bench.core.results import write_json_atomic
    from cifc_bench.evaluation import neglect as ng

    seq, cfg = ctx.sequence, ctx.config
    learned = {c.name for c in seq.concepts[: j + 1]}
    thresholds = neglect["calibration"]["thresholds"]
    folder = multi_dir(ctx.run_dir, j)
    per_image, hits = [], {name: [] for name in neglect["miss_rate"][j]}
    for q, m in enumerate(seq.multi_concept_prompts):
        if not set(m.concepts) <= learned:
            continue
        pairs = multi_requests(seq, q, cfg.multi_images_per_prompt)
        images = generate_cached(ctx, pairs, folder, f"generate multi q{q}@{j}")
        concepts = [seq.concept(c) for c in m.concepts]
        protos = [presence_prototype(ctx, c, references) for c in concepts]
        sims = ng.neglect_similarities(ctx.scorer, images, m.boxes, [c.kind for c in concepts], protos)
        scores = ng.score_presence(sims, ng.prompt_thresholds(neglect["calibration"], q, m.concepts))
        neglect["matrices"]["cnr"][j][q] = scores.cnr
        neglect["matrices"]["min_sim"][j][q] = scores.min_sim
        final = j == len(seq.tasks) - 1  # each final image neglected or not: the leaderboard's interval units
        if final:
            neglect.setdefault("per_image", {}).setdefault("cnr", {})[str(q)] = [bool(v) for v in scores.neglected]
        for k, c in enumerate(m.concepts):
            hits[c].extend(scores.present[:, k].tolist())
        exact = {}
        for check, fn in ctx.presence_fns.items():  # exact checks: neglected when any concept is not present
            exact[check] = [[bool(fn(im, c, m.boxes[k] if m.boxes else None)) for k, c in enumerate(concepts)]
                            for im in images]
            rows = neglect["matrices"].setdefault(check, [[None] * len(seq.multi_concept_prompts) for _ in seq.tasks])
            rows[j][q] = float(np.mean([not all(row) for row in exact[check]]))
            if final:
                neglect.setdefault("per_image", {}).setdefault(check, {})[str(q)] = [not all(r) for r in exact[check]]
        per_image += [{"prompt": q, "file": name, "concepts": list(m.concepts),
                       "similarity": scores.similarity[n].tolist(), "present": scores.present[n].tolist(),
                       **{f"present_{check}": rows[n] for check, rows in exact.items()}}
                      for n, (_, name) in enumerate(pairs)]
    neglect["miss_rate"][j] = {c: (1.0 - float(np.mean(v)) if v else None) for c, v in hits.items()}
    if per_image:
        write_json_atomic(folder / "scores.json", {"thresholds": thresholds, "images": per_image})


def evaluate_tracks(ctx: RunContext, j: int, tracks: dict[str, Any], references: dict[str, np.ndarray]) -> None:
    """Generate (or reuse) every learned target concept's outputs of every track, score them with the track's
    metrics, and fill row j of the track matrices."""
    seq = ctx.sequence
    for name, part in tracks.items():
        track = seq.track(name)
        for concept in track.targets(seq.concepts[: j + 1]):
            triples = track_pairs(ctx, track, concept)
            if not triples:
                continue
            pairs = [(r, file) for r, file, _ in triples]
            outputs = generate_cached(ctx, pairs, track_dir(ctx.run_dir, j, name, concept.name),
                                      f"generate {name} {concept.name}@{j}")
            inputs = track_input_dir(ctx.run_dir, name, concept.name)
            for (_, file, image) in triples:  # beside the outputs, for reports and readers of the run
                if not (inputs / file).exists():
                    save_atomic(image, inputs / file)
            sample = track_sample(track, concept, outputs, [im for _, _, im in triples], [r.prompt for r, _ in pairs],
                                  ctx.scorer, reference_features(ctx, concept, references))
            i = seq.concepts.index(concept)
            for metric in track.metrics:
                value = float(ctx.metric_fns[metric](sample))
                part["matrices"][metric][j][i] = None if math.isnan(value) else value
            if i == j or j == len(seq.tasks) - 1:  # the cells learning and final read: their interval units
                for metric, values in image_scores(ctx, sample, track.metrics).items():
                    part.setdefault("per_image", {}).setdefault(metric, {})[f"{j},{i}"] = values


def reference_features(ctx: RunContext, concept: Concept, references: dict[str, np.ndarray]) -> np.ndarray:
    """The scorer features of the concept's training images (encoded once per run)."""
    if concept.name not in references:
        references[concept.name] = ctx.scorer.encode_images([load_rgb(p) for p in list_images(concept.image_dir)])
    return references[concept.name]


def presence_prototype(ctx: RunContext, concept: Concept, references: dict[str, np.ndarray]) -> np.ndarray:
    """The concept's presence prototype under the run's scorer (computed once per run)."""
    from cifc_bench.evaluation.neglect import prototype

    return prototype(reference_features(ctx, concept, references))  # the same reference features as IA
