"""The leaderboard's 95 % intervals: paired over seeds and images (the units the protocol's fixed seeds pair),
the best method and the ones it cannot be told from, and the paired effect of one method argument (ablations,
sweeps)."""

from __future__ import annotations

from typing import Any

from cifc_bench.evaluation.metrics import DIRECTIONS
from cifc_bench.reporting.runs import (
    REFERENCE_MARK,
    RunRecord,
    per_image_cells,
    run_matrix,
    run_seed,
    runs_by_label,
)

INTERVAL_SUMMARIES = ("final", "learning", "forgetting")


INTERVALS = ":intervals"  # suffix of a metric's interval table in leaderboard_tables


def unit_table(run: RunRecord, metric: str, summary: str, images: bool = False):
    """One run's values behind a summary, the units the intervals resample: ``final`` the last row,
    ``learning`` the diagonal, ``forgetting`` diagonal − last row (none for the concept learned last). Units are
    concepts, or with ``images`` every (concept, prompt, image seed) of those concepts (``result.json``'s
    ``per_image``), in the protocol's concept order whatever order the run learned in, so that runs of two task
    orders pair concept by concept. NaN marks a unit the run cannot score, which :func:`paired_units` leaves out
    for every run; None: the run did not measure the summary (a final-only run has no diagonal). Concepts a metric
    does not score at all (no final value: a track's non-targets, ``context_acc`` on styles) are NaN throughout,
    so they are left out, as in the summaries."""
    units = _units(run, metric, summary, images)
    return None if units is None else units[0]


def _units(run: RunRecord, metric: str, summary: str, images: bool):
    """:func:`unit_table`'s values and, for each unit, the protocol position of its concept."""
    import numpy as np

    R = np.array([[np.nan if v is None else v for v in row] for row in run_matrix(run, metric)], dtype=float)
    T = len(R)
    diag, last = np.diag(R), R[-1]
    kept = np.flatnonzero(~np.isnan(last)) if not np.isnan(last).all() else np.arange(T)
    if summary != "final" and np.isnan(diag[kept]).any() and not images:
        return None
    in_protocol_order = np.argsort(run.protocol_positions)  # the run's concept index at each protocol position
    if not images:
        values = {"final": last, "learning": diag, "forgetting": diag - last}[summary].copy()
        values[np.setdiff1d(np.arange(T), kept)] = np.nan
        if summary == "forgetting":
            values[T - 1] = np.nan
        return None if np.isnan(values).all() else (values[in_protocol_order], np.arange(T))
    cells = per_image_cells(run, metric) or {}

    def row(j, i):
        v = cells.get(f"{j},{i}")
        return None if v is None else np.array([np.nan if x is None else x for x in v], dtype=float)

    parts = []  # (protocol position, the concept's units)
    for position, i in enumerate(in_protocol_order):
        final = row(T - 1, i)
        if i not in kept or (summary == "forgetting" and i == T - 1):
            parts.append((position, None if final is None else np.full(len(final), np.nan)))
            continue
        a = row(i, i) if summary != "final" else final
        if a is None or (summary == "forgetting" and final is None):
            return None
        parts.append((position, a - final if summary == "forgetting" else a))
    parts = [(position, p) for position, p in parts if p is not None]
    if not parts or all(np.isnan(p).all() for _, p in parts):
        return None
    return np.concatenate([p for _, p in parts]), np.concatenate([np.full(len(p), k) for k, p in parts])


def summary_units(groups: dict[str, list[RunRecord]], metric: str, summary: str, images: bool | None = None):
    """{label: seeds × units} of ``summary`` for the interval tables: :func:`paired_units` of every run's
    :func:`unit_table` (image units when every run has them, unless ``images`` says), each concept weighted
    equally. So a table's mean is the summary that ``result.json`` and the mean ± std tables report, the mean over
    concepts; unweighted, a concept with more scorable images would count more (on synth10, ``identity_acc``
    scores 16 images of an object and 20 of a style)."""
    if images is None:
        images = has_image_units([r for g in groups.values() for r in g], metric)
    units = {label: [_units(r, metric, summary, images) for r in g] for label, g in groups.items()}
    return paired_units({label: [None if u is None else u[0] for u in us] for label, us in units.items()},
                        {label: [None if u is None else u[1] for u in us] for label, us in units.items()})


def has_image_units(runs, metric: str) -> bool:
    """Whether every run has per-image scores of ``metric`` (runs made before they existed have not)."""
    return all(per_image_cells(r, metric) is not None for r in runs)


def paired_units(by_method: dict[str, list], concepts: dict[str, list] | None = None) -> dict[str, Any]:
    """{method: seeds × units} from each method's per-run unit vectors, restricted to the units every run
    scored, so that methods stay paired. A method drops out when a run of it lacks units or its runs differ in
    width; all do ({}) when the methods differ in width: other evaluation settings, no one set of units.
    ``concepts`` (like ``by_method``: each unit's concept, per run) weights the kept units so that every concept
    counts equally in a table's mean: a concept's n kept units are scaled by U / (C n), which leaves a table
    whose concepts have equal counts as it is."""
    import numpy as np

    tables = {label: np.stack(rows) for label, rows in by_method.items()
              if rows and all(r is not None for r in rows) and len({len(r) for r in rows}) == 1}
    if len({t.shape[1] for t in tables.values()}) != 1:
        return {}
    scored = ~np.any([np.isnan(t).any(0) for t in tables.values()], axis=0)
    if not scored.any():
        return {}
    weights = 1.0
    if concepts is not None:
        layout = np.asarray(concepts[next(iter(tables))][0])  # one protocol, one width: one layout for every run
        _, which, counts = np.unique(layout[scored], return_inverse=True, return_counts=True)
        weights = scored.sum() / (len(counts) * counts[which])
    return {label: t[:, scored] * weights for label, t in tables.items()}


def ranked(tables: dict[str, Any]) -> dict[str, Any]:
    """The labels that compete for ★, ≈ and win/tie/loss: every one but the references'."""
    return {label: t for label, t in tables.items() if REFERENCE_MARK not in label}


def interval_cells(tables: dict[str, Any], higher_is_better: bool,
                   bounds: tuple[float, float] | None = None) -> dict[str, str]:
    """{method: "mean [low, high]"} with ★ on the best and ≈ on every method not distinguishable from it
    (paired); ``bounds`` clips an interval to the values the quantity can take, e.g. a rate's [0, 100]."""
    from cifc_bench.evaluation import stats

    marks = {}
    if len(ranked(tables)) > 1:
        best, ties = stats.indistinguishable_from_best(ranked(tables), higher_is_better)
        marks = {best: " ★", **{m: " ≈" for m in ties}}
    cells = {}
    for label, table in tables.items():
        iv = stats.interval(table)
        low, high = (max(iv.low, bounds[0]), min(iv.high, bounds[1])) if bounds else (iv.low, iv.high)
        cells[label] = f"{iv.mean:.1f} [{low:.1f}, {high:.1f}]{marks.get(label, '')}"
    return cells


def summary_bounds(summary: str, bounds: tuple[float, float] | None, scale: float):
    """The displayed values a summary of a metric with ``bounds`` can take: the metric's own for ``final`` and
    ``learning``, ± its width for ``forgetting`` (a difference of two scores)."""
    if bounds is None:
        return None
    low, high = scale * bounds[0], scale * bounds[1]
    return (low - high, high - low) if summary == "forgetting" else (low, high)


def interval_columns(metric: str, by_label: dict[str, list[RunRecord]], summaries=INTERVAL_SUMMARIES):
    """Per summary, {method label: "mean [low, high] ★/≈"} (scaled for display; ★ best, ≈ not distinguishable
    from it), and the win/tie/loss record on ``final``. Units are images when every run has per-image scores,
    else concepts, each concept weighted equally; a unit some run cannot score is left out for all, so that
    methods stay paired."""
    from cifc_bench.evaluation import stats
    from cifc_bench.evaluation.metrics import display_scale, value_bounds

    scale = display_scale(metric)[0]
    bounds = value_bounds(metric)
    tables = {key: {label: scale * t for label, t in summary_units(by_label, metric, key).items()}
              for key in summaries}
    cells = {key: interval_cells(by_method, DIRECTIONS[key] == "higher", summary_bounds(key, bounds, scale))
             for key, by_method in tables.items()}
    final = tables.get("final", {})
    record = stats.win_tie_loss(ranked(final), DIRECTIONS["final"] == "higher") if len(ranked(final)) > 1 else {}
    return cells, record


def interval_table(metric: str, runs: list[RunRecord]):
    """A metric's final, learning and forgetting per method with 95 % intervals (:mod:`cifc_bench.evaluation.stats`: a
    crossed bootstrap over run seeds and units, paired across methods by unit: :func:`summary_units`). ★ marks the best method
    of a column, ≈ every method whose paired difference to it is not distinguishable from 0; ``W-T-L`` counts
    the methods each one beats, ties and loses to on ``final``."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: run_matrix(r, metric) is not None)
    cells, record = interval_columns(metric, by_label)
    rows = []
    for label, group in by_label.items():
        row: dict[str, Any] = {"method": label, "seeds": len(group)}
        for key in INTERVAL_SUMMARIES:
            row[key] = cells[key].get(label, "–")
        results = list(record.get(label, {}).values())
        row["W-T-L (final)"] = "–" if not results else "-".join(str(results.count(r)) for r in ("win", "tie", "loss"))
        rows.append(row)
    columns = ["method", "seeds", *INTERVAL_SUMMARIES, "W-T-L (final)"]
    return pd.DataFrame(rows, columns=columns, dtype=object)


EFFECTS = "effects:"  # effects:<metric>, the paired change one argument makes (ablations, sweeps)


def effect_pairs(by_label: dict[str, list[RunRecord]]) -> list[tuple[str, str, str, Any]]:
    """(reference, changed, argument, value) for every two labels of one method (same schedule, same note)
    whose arguments differ by one that the changed runs set and the reference leaves at its default."""
    info = {label: (g[0].data["run_info"], g[0].data["run_info"].get("config", {}).get("schedule"), g[0].note)
            for label, g in by_label.items()}
    pairs = []
    for ref, (a, schedule_a, note_a) in info.items():
        for changed, (b, schedule_b, note_b) in info.items():
            if ref == changed or (a["method"], schedule_a, note_a) != (b["method"], schedule_b, note_b):
                continue
            args_a, args_b = a.get("method_args") or {}, b.get("method_args") or {}
            extra = set(args_b) - set(args_a)
            if len(extra) == 1 and all(k in args_b and args_b[k] == v for k, v in args_a.items()):
                key = extra.pop()
                pairs.append((ref, changed, key, args_b[key]))
    return sorted(pairs, key=lambda p: (p[0], p[2], str(p[3])))


def paper_effect(method: str, argument: str, value: Any) -> tuple[str, str, float, str] | None:
    """What the method's paper reports for setting ``argument`` to ``value``: (metric, summary, change, source)
    from the method class's ``paper_effects``, or None."""
    from cifc_bench.core.registry import load_method

    try:
        effects = getattr(load_method(method), "paper_effects", {}) or {}
    except Exception:  # not installed here
        return None
    return effects.get((argument, value))


def effects_table(metric: str, runs: list[RunRecord]):
    """The change one argument makes, paired: for every changed configuration and its reference (the same
    method with that argument at its default), changed − reference of ``final``, ``learning`` and
    ``forgetting`` with 95 % intervals (* when the interval excludes 0), and beside it what the method's paper
    reports for that change, where it reports one. Runs with the same seed share their initialisation, data
    order and sampling noise, so when both configurations ran some seeds in common the difference is taken on
    those seeds alone, seed by seed and unit by unit (:func:`cifc_bench.evaluation.stats.interval` of the difference
    table; "N paired"). Comparing a one-seed sweep point with the mean of the reference's three seeds would
    add that seed's own deviation to the effect. Only configurations with no seed in common are compared as
    independent draws (:func:`cifc_bench.evaluation.stats.paired_difference`; "a vs b")."""
    import pandas as pd

    from cifc_bench.evaluation import stats
    from cifc_bench.evaluation.metrics import display_scale

    scale = display_scale(metric)[0]
    by_label = runs_by_label(runs, lambda r: run_matrix(r, metric) is not None)
    rows = []
    for ref, changed, key, value in effect_pairs(by_label):
        images = has_image_units(by_label[ref] + by_label[changed], metric)
        shared = {run_seed(r) for r in by_label[ref]} & {run_seed(r) for r in by_label[changed]}
        groups = {label: sorted((r for r in by_label[label] if not shared or run_seed(r) in shared), key=run_seed)
                  for label in (ref, changed)}  # rows aligned by seed when paired
        same_seeds = bool(shared) and [run_seed(r) for r in groups[ref]] == [run_seed(r) for r in groups[changed]]
        row: dict[str, Any] = {"changed": changed, "against": ref,
                               "seeds": (f"{len(groups[changed])} paired" if same_seeds
                                         else f"{len(groups[changed])} vs {len(groups[ref])}")}
        deltas = {}
        for summary in INTERVAL_SUMMARIES:
            tables = summary_units(groups, metric, summary, images)
            if len(tables) == 2:
                new, old = scale * tables[changed], scale * tables[ref]
                iv = deltas[summary] = stats.interval(new - old) if same_seeds else stats.paired_difference(new, old)
                row[f"Δ {summary}"] = f"{iv.mean:+.1f} [{iv.low:+.1f}, {iv.high:+.1f}]{' *' if iv.excludes(0.0) else ''}"
        paper = paper_effect(by_label[ref][0].data["run_info"]["method"], key, value)
        if paper and paper[0] == metric:
            _, summary, change, source = paper
            iv = deltas.get(summary)
            row["paper"] = f"{change:+.1f} {summary} ({source})"
            row["same direction"] = ("–" if iv is None else "not resolved" if not iv.excludes(0.0)
                                     else "yes" if (iv.mean > 0) == (change > 0) else "no")
        rows.append(row)
    columns = ["changed", "against", "seeds", *(f"Δ {s}" for s in INTERVAL_SUMMARIES)]
    if any("paper" in r for r in rows):
        columns += ["paper", "same direction"]
    return pd.DataFrame(rows, columns=columns, dtype=object).fillna("–")


NEGLECT_INTERVALS = "cnr" + INTERVALS


def neglect_units(run: RunRecord, check: str, images: bool):
    """One run's final neglect units of ``check`` (``cnr`` or an exact check), ×100: each final image (1:
    neglected) with ``images``, else each multi-concept prompt's rate; None when not measured."""
    import numpy as np

    neglect = run.data.get("neglect") or {}
    if images:
        cells = (neglect.get("per_image") or {}).get(check)
        if not cells:
            return None
        return 100.0 * np.concatenate([np.asarray(cells[q], dtype=float) for q in sorted(cells, key=int)])
    rows = (neglect.get("matrices") or {}).get(check)
    if not rows or any(v is None for v in rows[-1]):
        return None
    return 100.0 * np.asarray(rows[-1], dtype=float)


def neglect_interval_table(runs: list[RunRecord]):
    """Each neglect rate on the final model (``cnr`` and every exact check) per method, mean [95 % interval]
    over seeds and units (the final multi-concept images where every run has them, else the prompts), ★ the
    lowest, ≈ not distinguishable from it, and the methods whose rate differs from this one's at 95 % (paired
    difference excluding 0)."""
    import pandas as pd

    from cifc_bench.evaluation import stats

    by_label = runs_by_label(runs, lambda r: bool(r.data.get("neglect")))
    checks = list(dict.fromkeys(m for g in by_label.values() for r in g for m in r.data["neglect"]["matrices"]
                                if m != "min_sim"))
    columns, rows = ["method", "seeds"], {label: {"method": label, "seeds": len(g)} for label, g in by_label.items()}
    for check in checks:
        images = all(check in (r.data["neglect"].get("per_image") or {}) for g in by_label.values() for r in g)
        tables = paired_units({label: [neglect_units(r, check, images) for r in group]
                               for label, group in by_label.items()})
        cells = interval_cells(tables, higher_is_better=False, bounds=(0.0, 100.0))
        differs = {a: [b for b in tables if b != a and stats.paired_difference(tables[a], tables[b]).excludes(0.0)]
                   for a in tables}
        columns += [f"{check} final", f"{check} differs at 95 % from"]
        for label in tables:
            rows[label][f"{check} final"] = cells[label]
            rows[label][f"{check} differs at 95 % from"] = ", ".join(differs[label]) or "none"
    return pd.DataFrame(list(rows.values()), columns=columns, dtype=object).fillna("–")
