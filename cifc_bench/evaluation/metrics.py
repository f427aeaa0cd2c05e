"""Pure metric functions: per-image scores and continual-learning summaries of an after-each-task matrix.

``R[j][i]`` is concept i's score with the model state after task j; entries not measured are NaN
(``None`` in JSON): the upper triangle always, and every row but the last under ``final`` evaluation::

    R = np.array([[0.8, nan], [0.6, 0.9]])
    summarize(R) == {"final": 0.75, "avg_incremental": 0.775, "forgetting": 0.2, ...}
"""

from __future__ import annotations

import math

import numpy as np

TA_SCALE = 2.5  # CLIPScore's w, as in the CIDM evaluator

#: Which way is better, for sorting leaderboards.
DIRECTIONS = {
    "final": "higher",
    "avg_incremental": "higher",
    "learning": "higher",
    "forgetting": "lower",
    "forgetting_max": "lower",
    "bwt": "higher",
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (cosine similarity is then a dot product)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def image_alignment(generated: np.ndarray, references: np.ndarray) -> float:
    """IA: mean cosine over all (generated, reference) pairs of image features."""
    return float((unit_rows(generated) @ unit_rows(references).T).mean())


def text_alignment_per_image(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """TA per image: 2.5 * max(cos(image, its own text), 0); row k of ``texts`` belongs to image k."""
    cos = (unit_rows(images) * unit_rows(texts)).sum(-1)
    return TA_SCALE * np.maximum(cos, 0.0)


def ia(sample) -> float:
    """IA of a concept's images (entry point ``ia``): :func:`image_alignment` with its training images."""
    return image_alignment(sample.features, sample.reference_features)


def ta(sample) -> float:
    """TA of a concept's images (entry point ``ta``): mean CLIPScore against the class-word prompts."""
    return float(text_alignment_per_image(sample.features, sample.text_features).mean())


def ia_dino(sample) -> float:
    """IA under DINO features (entry point ``ia_dino``), the DreamBooth / Custom Diffusion convention."""
    if sample.dino_features is None:
        raise ValueError("ia_dino needs DINO features: run with --dino dino-vits16 (or tiny-random)")
    return image_alignment(sample.dino_features, sample.dino_reference_features)


def _encoded_alignment(sample, metric: str, encoder: str) -> float:
    if metric not in sample.encoded:
        raise ValueError(f"{metric} needs {encoder} features: run with --image-encoders {encoder}")
    return image_alignment(sample.encoded[metric], sample.encoded_references[metric])


def ia_dinov2(sample) -> float:
    """IA under DINOv2 ViT-S/14 CLS features (entry point ``ia_dinov2``; ``--image-encoders dinov2-vits14``)."""
    return _encoded_alignment(sample, "ia_dinov2", "dinov2-vits14")


def ia_dreamsim(sample) -> float:
    """IA under DreamSim's ensemble embedding (entry point ``ia_dreamsim``; ``--image-encoders dreamsim``):
    1 − the mean DreamSim distance between the images and the concept's training images."""
    return _encoded_alignment(sample, "ia_dreamsim", "dreamsim")


ia.bounds = ia_dino.bounds = ia_dinov2.bounds = ia_dreamsim.bounds = (-1.0, 1.0)  # cosines, for intervals
ta.bounds = (0.0, TA_SCALE)  # CLIPScore: TA_SCALE * max(cos, 0)


def measured_metrics(results, first=("ia", "ta")) -> list[str]:
    """The per-concept metrics that any of ``results`` (result.json dicts) measured: ``first`` (always), then
    the others in the order the results name them. Leaderboards and reports show these, whatever plugin made
    them."""
    names = list(first)
    for r in results:
        names += [m for m in r.get("matrices", {}) if m not in names]
    return names


def _check_square(R: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"expected a square T x T matrix, got shape {R.shape}")
    return R


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def final_average(R: np.ndarray) -> float:
    """Mean of the last row: every concept's score after the last task (the CIDM tables' Avg)."""
    R = _check_square(R)
    return _mean(list(R[-1]))


def defined_concepts(R: np.ndarray) -> np.ndarray:
    """Which concepts (columns) the metric is defined for: those with a final value (the last row is always
    evaluated, so a missing final value means the metric cannot score that concept, e.g. ``context_acc`` on a
    style prompt that names no context). When none is, all count, and the summaries are NaN."""
    R = _check_square(R)
    defined = ~np.isnan(R[-1]) if len(R) else np.zeros(0, dtype=bool)
    return defined if defined.any() else np.ones(len(R), dtype=bool)


def average_incremental(R: np.ndarray) -> float:
    """Mean over states j of the mean over concepts i <= j (iCaRL-style); NaN unless every row was measured."""
    R = _check_square(R)
    defined = defined_concepts(R)
    rows = [R[j, : j + 1][defined[: j + 1]] for j in range(len(R))]
    rows = [r for r in rows if r.size]
    if not rows or any(np.isnan(r).any() for r in rows):
        return math.nan
    return float(np.mean([r.mean() for r in rows]))


def learning_accuracy(R: np.ndarray) -> float:
    """Mean of the diagonal: each concept's score right after its own task (plasticity; Riemer et al. 2019's
    learning accuracy). Read beside forgetting: a method that stops learning also stops forgetting."""
    R = _check_square(R)
    diagonal = np.diag(R)[defined_concepts(R)]
    return math.nan if np.isnan(diagonal).any() else float(diagonal.mean())


def final_drops(R: np.ndarray, before) -> float:
    """Mean over i < T of ``before(R, i)`` - R[T][i], over the concepts the metric defines (NaN when none)."""
    R = _check_square(R)
    T = len(R)
    if T < 2:
        return math.nan
    defined = defined_concepts(R)
    drops = [before(R, i) - R[-1, i] for i in range(T - 1) if defined[i]]
    return math.nan if not drops or any(math.isnan(d) for d in drops) else float(np.mean(drops))


def forgetting(R: np.ndarray) -> float:
    """Mean over i < T of R[i][i] - R[T][i]: the drop from just-learned to final (= -BWT)."""
    return final_drops(R, lambda M, i: M[i, i])


def forgetting_max(R: np.ndarray) -> float:
    """Chaudhry et al.: mean over i < T of max_{i <= l < T} R[l][i] - R[T][i]."""
    return final_drops(R, lambda M, i: np.max(M[i : len(M) - 1, i]))


def backward_transfer(R: np.ndarray) -> float:
    """GEM's BWT: mean over i < T of R[T][i] - R[i][i]."""
    f = forgetting(R)
    return -f if not math.isnan(f) else math.nan


def summarize(R: np.ndarray) -> dict[str, float]:
    """All continual summaries of one metric's matrix; NaN where the schedule did not measure enough."""
    return {
        "final": final_average(R),
        "avg_incremental": average_incremental(R),
        "learning": learning_accuracy(R),
        "forgetting": forgetting(R),
        "forgetting_max": forgetting_max(R),
        "bwt": backward_transfer(R),
    }


def summarize_available(R: np.ndarray) -> dict[str, float]:
    """Summaries of a T×Q matrix whose column q is measured from the first row where its item is available
    (multi-concept prompts, once all their concepts are learned): ``final`` is the mean of the last row,
    ``first`` the mean of each column's first measured value, and ``change`` the mean of (last − first) per
    column: for ``cnr`` that is the neglect forgetting of §2.7 (positive: neglect grew)."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] == 0:
        return {"final": math.nan, "first": math.nan, "change": math.nan}
    firsts, changes = [], []
    for col in R.T:
        measured = np.flatnonzero(~np.isnan(col))
        if measured.size:
            firsts.append(col[measured[0]])
            if not math.isnan(col[-1]):
                changes.append(col[-1] - col[measured[0]])
    return {"final": _mean(list(R[-1])), "first": _mean(firsts), "change": _mean(changes)}


def summarize_result(result: dict) -> dict[str, dict[str, float | None]]:
    """Every summary of a result file's matrices, over the tasks it finished (JSON-ready: NaN becomes None)."""
    out = {}
    done = len(result["tasks"])
    for m, rows in result["matrices"].items():
        R = from_json_matrix(rows)[:done, :done]
        stats = summarize(R) if done else {}
        out[m] = {k: (None if math.isnan(v) else v) for k, v in stats.items()}
        undefined = [name for name, ok in zip(result.get("concepts", []), defined_concepts(R), strict=False) if not ok]
        if done and undefined:  # summarised over the other concepts: say which were left out
            out[m]["undefined_for"] = undefined
    for m, rows in ((result.get("neglect") or {}).get("matrices") or {}).items():
        stats = summarize_available(from_json_matrix(rows)[:done]) if done else {}
        out[m] = {k: (None if math.isnan(v) else v) for k, v in stats.items()}
    for track, part in (result.get("tracks") or {}).items():  # over the track's target concepts only
        for m, rows in part["matrices"].items():
            stats = summarize(from_json_matrix(rows)[:done, :done]) if done else {}
            out[track_key(track, m)] = {k: (None if math.isnan(v) else v) for k, v in stats.items()}
    return out


def display_scale(name: str) -> tuple[float, str]:
    """How tables show a metric (or ``track/metric``): (factor, unit). Scores in [0, 1] are shown ×100; a
    metric function with a ``display`` attribute, e.g. PSNR's ``(1.0, "dB")``, says otherwise."""
    return getattr(_metric_function(name), "display", (100.0, "x100"))  # neglect rates and others: fractions


def value_bounds(name: str) -> tuple[float, float] | None:
    """The values a metric (or ``track/metric``) can take, from its function's ``bounds`` attribute: the
    leaderboard clips an interval to them. None when the metric declares none."""
    return getattr(_metric_function(name), "bounds", None)


def _metric_function(name: str):
    """The registered function of a metric (or ``track/metric``), or None for a name no plugin registers."""
    from cifc_bench.core.registry import METRICS, PluginError, load_component

    try:
        return load_component(METRICS, name.rsplit("/", 1)[-1], "metric")
    except PluginError:
        return None


def track_key(track: str, metric: str) -> str:
    """The summary name of a track's metric, e.g. ``editing/box_ia``."""
    return f"{track}/{metric}"


def to_json_matrix(R: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in np.asarray(R, dtype=np.float64)]


def from_json_matrix(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
