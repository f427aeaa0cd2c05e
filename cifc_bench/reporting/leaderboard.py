"""Leaderboard tables: mean ± std over seeds per method, per-concept final scores plus summaries.

Runs are found by scanning for ``result.json``; failed runs and runs from a dirty source tree are left out
unless asked for. Runs scored with other weights of a scorer than the newest are always left out (they need
``cifc-bench rescore``), and so are runs made on other weights of the base model than the newest (they need a
new run). A protocol may carry the paper's reported numbers, shown as clearly labelled reference
rows. Scores are shown ×100, like the CIDM tables::

    tables = leaderboard_tables("cifc10", Path("results"))
    print(render(tables, "md"))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifc_bench.core.config import SHARED
from cifc_bench.core.results import RESULT_FILE, SCHEMA_VERSION
from cifc_bench.evaluation.metrics import DIRECTIONS

SCALE = 100.0
SUMMARY_COLUMNS = ("final", "avg_incremental", "learning", "forgetting", "forgetting_max", "bwt")
FORMATS = ("md", "csv", "latex")  # and "html": a page with plots (cifc_bench.reporting.leaderboard_page)


@dataclass(frozen=True)
class RunRecord:
    path: Path
    data: dict[str, Any]
    note: str = ""  # e.g. "[old v1]": shown in the label, so it is never grouped with runs without it

    @property
    def label(self) -> str:
        """Method and arguments, and the training schedule when it is not the shared one (runs on two budgets
        are two rows), e.g. ``cidm (variant=release) [schedule release]``."""
        info = self.data["run_info"]
        args = info.get("method_args") or {}
        label = info["method"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else "")
        schedule = info.get("config", {}).get("schedule") or SHARED
        label = label if schedule == SHARED else f"{label} [schedule {schedule}]"
        label = f"{label} {REFERENCE_MARK}" if info.get("reference") else label
        return f"{label} {self.note}" if self.note else label

    @property
    def method_version(self) -> int:
        return int(self.data["run_info"].get("method_version", 1))  # runs before versions were recorded: 1


def find_runs(results_dir, protocol: str, include_failed: bool = False, include_dirty: bool = False,
              include_old_versions: bool = False, protocol_version: str | None = None):
    """Result files of ``protocol`` under ``results_dir`` (a folder or several), filtered by status, tree
    cleanliness, the protocol's version (when ``protocol_version`` is given: a run of another version asked
    other questions), the method's implementation version and the model and scorer weights; a run found twice
    (the same identity) counts once. ``include_old_versions`` keeps runs of other protocol and method versions,
    marked."""
    runs, skipped = [], []
    roots = [results_dir] if isinstance(results_dir, (str, Path)) else list(results_dir)
    for path in sorted({p for root in roots for p in Path(root).rglob(RESULT_FILE)}):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            skipped.append(f"{path}: unreadable ({err})")
            continue
        if data.get("schema_version") != SCHEMA_VERSION or data["run_info"]["protocol"]["name"] != protocol:
            continue
        if data.get("status") != "completed" and not include_failed:
            skipped.append(f"{path}: status {data.get('status')!r} (use --include-failed)")
            continue
        info = data["run_info"]
        later = (*info.get("rescores", ()), *info.get("tracks_added", ()))
        if any(g.get("dirty") for g in (info.get("git", {}), *(r.get("git", {}) for r in later))) and not include_dirty:
            skipped.append(f"{path}: run (or its rescoring, or tracks added later) from a dirty source tree "
                           "(use --include-dirty)")
            continue
        version = str(info["protocol"].get("version"))
        if protocol_version is not None and version != str(protocol_version):
            if not include_old_versions:
                skipped.append(f"{path}: made on version {version} of protocol {protocol!r}, this cifc-bench has "
                               f"version {protocol_version} (its YAML file says what changed); run it again, or show "
                               "it with --include-old-versions")
                continue
            runs.append(RunRecord(path, data, note=f"[old protocol {version}]"))
            continue
        runs.append(RunRecord(path, data))
    runs, skipped = _current_method_versions(runs, skipped, include_old_versions)
    return _once_per_identity(*_same_scorer_weights(*_same_model_weights(runs, skipped)))


def _once_per_identity(runs: list[RunRecord], skipped: list[str]):
    """Two runs of one identity (method, arguments, settings, seed, weights, code) are one run made twice:
    keep the newest completed one and say which were dropped."""
    from cifc_bench.core.results import run_identity

    def rank(r):
        return (r.data.get("status") == "completed", r.data["run_info"].get("started") or "")

    keys = [run_identity(r.data) for r in runs]
    best: dict[str, RunRecord] = {}
    for key, r in zip(keys, runs, strict=True):
        if key not in best or rank(r) > rank(best[key]):
            best[key] = r
    kept = [r for key, r in zip(keys, runs, strict=True) if best[key] is r]
    skipped += [f"{r.path}: the same run as {best[key].path} (method, arguments, settings, seed, weights and code); "
                "counted once, the newest completed" for key, r in zip(keys, runs, strict=True) if best[key] is not r]
    return kept, skipped


def _current_method_versions(runs: list[RunRecord], skipped: list[str], include_old: bool = False):
    """A method's numbers change with its implementation: keep the runs made with the installed version of each
    method (for a method that cannot be imported here, the newest version among the runs). ``include_old`` keeps
    the others too, labelled ``[old vN]`` so they form rows of their own."""
    from cifc_bench.core.registry import load_method

    current: dict[str, int] = {}
    for r in runs:
        name = r.data["run_info"]["method"]
        if name not in current:
            try:
                current[name] = int(getattr(load_method(name), "version", 1))
            except Exception:  # not installed here: fall back to the runs themselves
                current[name] = max(o.method_version for o in runs if o.data["run_info"]["method"] == name)
    kept = []
    for r in runs:
        name = r.data["run_info"]["method"]
        if r.method_version != current[name] and include_old:
            kept.append(RunRecord(r.path, r.data, note=" ".join(filter(None, (r.note, f"[old v{r.method_version}]")))))
        elif r.method_version != current[name]:
            skipped.append(f"{r.path}: made with version {r.method_version} of method {name!r}'s implementation, "
                           f"this cifc-bench has version {current[name]} (docs/reference/fidelity.md says what changed); run "
                           f"it again, or show it with --include-old-versions")
        else:
            kept.append(r)
    return kept, skipped


def _scored_at(info: dict) -> str:
    return max([info.get("started") or "", *(r.get("at") or "" for r in info.get("rescores", ()))])


def _same_scorer_weights(runs: list[RunRecord], skipped: list[str]):
    """Scores made with different weights under one scorer name are not comparable: keep the runs scored with
    the newest-scored run's weights, and say how to bring the others up to date."""
    return _same_weights(runs, skipped, "scorer", "scored", _scored_at,
                         lambda r: f"rescore it with `cifc-bench rescore {r.path.parent}`")


def _same_model_weights(runs: list[RunRecord], skipped: list[str]):
    """Runs on different weights under one model name (a re-pretrained synth base model) are not comparable:
    keep the runs on the newest run's weights. Only a new run helps, as the images themselves must change."""
    return _same_weights(runs, skipped, "model", "made", lambda info: info.get("started") or "",
                         lambda r: f"run it again (`cifc-bench run --method {r.data['run_info']['method']} ...`)")


def _same_weights(runs: list[RunRecord], skipped: list[str], kind: str, verb: str, when, fix):
    """Keep the runs whose ``<kind>_fingerprint`` is that of the newest run (by ``when``) of the same ``kind``."""
    newest: dict[str, tuple[str, str | None]] = {}
    for r in runs:
        info = r.data["run_info"]
        name, at = info.get(kind), when(info)
        if name not in newest or at > newest[name][0]:
            newest[name] = (at, info.get(f"{kind}_fingerprint"))
    kept = []
    for r in runs:
        info = r.data["run_info"]
        if info.get(f"{kind}_fingerprint") != newest[info.get(kind)][1]:
            skipped.append(f"{r.path}: {verb} with other weights of {kind} {info.get(kind)!r} than the newest runs; "
                           f"{fix(r)}")
        else:
            kept.append(r)
    return kept, skipped


def _fmt(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _summary(run: RunRecord, metric: str) -> dict[str, float | None]:
    """The run's stored summary of ``metric``; a summary newer than the file is computed from its matrix."""
    stored = run.data["summary"].get(metric, {})
    if metric not in run.data["matrices"] or set(SUMMARY_COLUMNS) <= stored.keys():
        return stored
    from cifc_bench.evaluation.metrics import summarize_result

    return {**summarize_result(run.data).get(metric, {}), **stored}


def runs_by_label(runs: list[RunRecord], keep=lambda r: True) -> dict[str, list[RunRecord]]:
    """The runs that ``keep`` accepts, grouped by method label (method plus its arguments), in input order."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        if keep(r):
            groups.setdefault(r.label, []).append(r)
    return groups


def metric_table(metric: str, runs: list[RunRecord], concepts: list[str], reference: dict[str, Any] | None):
    """One metric's DataFrame: a row per method (mean ± std over its runs), then the reference rows."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: metric in r.data["matrices"])
    rows, sort_keys = [], []
    for label, group in by_label.items():
        row: dict[str, Any] = {"method": label, "seeds": len(group), "storage": group[0].data["run_info"].get("storage")}
        for i, name in enumerate(concepts):
            row[name] = _fmt([_scaled(r.data["matrices"][metric][-1][i]) for r in group])
        summaries = [_summary(r, metric) for r in group]
        for key in SUMMARY_COLUMNS:
            row[key] = _fmt([_scaled(s.get(key)) for s in summaries])
        finals = [_scaled(s.get("final")) for s in summaries]
        finals = [f for f in finals if f is not None]
        sort_keys.append(sum(finals) / len(finals) if finals else -math.inf)
        rows.append(row)
    sign = -1 if DIRECTIONS["final"] == "higher" else 1
    rows = [row for _, row in sorted(zip(sort_keys, rows, strict=True), key=lambda kv: sign * kv[0])]
    for label, values in (reference or {}).items():
        row = {"method": label, "seeds": 1, "storage": "reported"}
        row.update({name: f"{v:.1f}" for name, v in zip(concepts, values[: len(concepts)], strict=False)})
        row["final"] = f"{values[len(concepts)]:.1f}" if len(values) > len(concepts) else "–"
        rows.append(row)
    columns = ["method", "seeds", "storage", *concepts, *SUMMARY_COLUMNS]
    return pd.DataFrame(rows, columns=columns, dtype=object).fillna("–")


INTERVAL_SUMMARIES = ("final", "learning", "forgetting")
INTERVALS = ":intervals"  # suffix of a metric's interval table in leaderboard_tables


def _part(run: RunRecord, metric: str) -> tuple[dict[str, Any], str]:
    """Where ``metric`` lives in a run's result: (the result or its track's part, the metric's own name)."""
    if "/" in metric:
        track, name = metric.split("/", 1)
        return (run.data.get("tracks") or {}).get(track) or {}, name
    return run.data, metric


def run_matrix(run: RunRecord, metric: str) -> list[list] | None:
    """A run's T×C matrix of ``metric``, or of a track's metric named ``track/metric``; None if not measured."""
    part, name = _part(run, metric)
    return (part.get("matrices") or {}).get(name)


def per_image_cells(run: RunRecord, metric: str) -> dict[str, list] | None:
    """A run's per-image scores of ``metric`` (or ``track/metric``), by cell ``"j,i"``; None if not kept."""
    part, name = _part(run, metric)
    return (part.get("per_image") or {}).get(name)


def unit_table(run: RunRecord, metric: str, summary: str, images: bool = False):
    """One run's values behind a summary, the units the intervals resample: ``final`` the last row,
    ``learning`` the diagonal, ``forgetting`` diagonal − last row over all but the last concept. Units are
    concepts, or with ``images`` every (concept, prompt, image seed) of those concepts (``result.json``'s
    ``per_image``). NaN marks a unit the metric cannot score; None: the run did not measure the summary (a
    final-only run has no diagonal). Concepts a metric does not score at all (no final value: a track's
    non-targets, ``context_acc`` on styles) are left out, as in the summaries."""
    import numpy as np

    R = np.array([[np.nan if v is None else v for v in row] for row in run_matrix(run, metric)], dtype=float)
    T = len(R)
    diag, last = np.diag(R), R[-1]
    kept = np.flatnonzero(~np.isnan(last)) if not np.isnan(last).all() else np.arange(T)
    if summary != "final" and np.isnan(diag[kept]).any() and not images:
        return None
    if not images:
        values = {"final": last[kept], "learning": diag[kept], "forgetting": (diag - last)[kept[kept < T - 1]]}[summary]
        return None if values.size == 0 else values
    cells = per_image_cells(run, metric) or {}

    def row(j, i):
        v = cells.get(f"{j},{i}")
        return None if v is None else np.array([np.nan if x is None else x for x in v], dtype=float)

    parts = []
    for i in (kept if summary != "forgetting" else kept[kept < T - 1]):
        a = row(i, i) if summary != "final" else row(T - 1, i)
        b = row(T - 1, i) if summary == "forgetting" else None
        if a is None or (summary == "forgetting" and b is None):
            return None
        parts.append(a - b if b is not None else a)
    return np.concatenate(parts) if parts else None


def has_image_units(runs, metric: str) -> bool:
    """Whether every run has per-image scores of ``metric`` (runs made before they existed have not)."""
    return all(per_image_cells(r, metric) is not None for r in runs)


def paired_units(by_method: dict[str, list]) -> dict[str, Any]:
    """{method: seeds × units} from each method's per-run unit vectors, restricted to the units every run
    scored, so that methods stay paired. A method drops out when a run of it lacks units or its runs differ in
    width; all do ({}) when the methods differ in width: other evaluation settings, no one set of units."""
    import numpy as np

    tables = {label: np.stack(rows) for label, rows in by_method.items()
              if rows and all(r is not None for r in rows) and len({len(r) for r in rows}) == 1}
    if len({t.shape[1] for t in tables.values()}) != 1:
        return {}
    scored = ~np.any([np.isnan(t).any(0) for t in tables.values()], axis=0)
    return {label: t[:, scored] for label, t in tables.items()} if scored.any() else {}


REFERENCE_MARK = "[reference, not ranked]"  # a method that breaks the rules on purpose (replay)


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


def _interval_columns(metric: str, by_label: dict[str, list[RunRecord]], summaries=INTERVAL_SUMMARIES):
    """Per summary, {method label: "mean [low, high] ★/≈"} (scaled for display; ★ best, ≈ not distinguishable
    from it), and the win/tie/loss record on ``final``. Units are images when every run has per-image scores,
    else concepts; a unit some run cannot score is left out for all, so that methods stay paired."""
    from cifc_bench.evaluation import stats
    from cifc_bench.evaluation.metrics import display_scale, value_bounds

    scale = display_scale(metric)[0]
    bounds = value_bounds(metric)
    images = has_image_units([r for g in by_label.values() for r in g], metric)
    tables = {key: {label: scale * t for label, t in paired_units(
        {label: [unit_table(r, metric, key, images) for r in group] for label, group in by_label.items()}).items()}
        for key in summaries}
    cells = {key: interval_cells(by_method, DIRECTIONS[key] == "higher", summary_bounds(key, bounds, scale))
             for key, by_method in tables.items()}
    final = tables.get("final", {})
    record = stats.win_tie_loss(ranked(final), DIRECTIONS["final"] == "higher") if len(ranked(final)) > 1 else {}
    return cells, record


def interval_table(metric: str, runs: list[RunRecord]):
    """A metric's final, learning and forgetting per method with 95 % intervals (:mod:`cifc_bench.evaluation.stats`: a
    crossed bootstrap over run seeds and concepts, paired across methods by concept). ★ marks the best method
    of a column, ≈ every method whose paired difference to it is not distinguishable from 0; ``W-T-L`` counts
    the methods each one beats, ties and loses to on ``final``."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: run_matrix(r, metric) is not None)
    cells, record = _interval_columns(metric, by_label)
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


TRACK = "track:"  # prefix of a track's table in leaderboard_tables


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


def _seed(run: RunRecord) -> int:
    return run.data["run_info"].get("seed", 0)


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
        shared = {_seed(r) for r in by_label[ref]} & {_seed(r) for r in by_label[changed]}
        groups = {label: sorted((r for r in by_label[label] if not shared or _seed(r) in shared), key=_seed)
                  for label in (ref, changed)}  # rows aligned by seed when paired
        same_seeds = bool(shared) and [_seed(r) for r in groups[ref]] == [_seed(r) for r in groups[changed]]
        row: dict[str, Any] = {"changed": changed, "against": ref,
                               "seeds": (f"{len(groups[changed])} paired" if same_seeds
                                         else f"{len(groups[changed])} vs {len(groups[ref])}")}
        deltas = {}
        for summary in INTERVAL_SUMMARIES:
            tables = paired_units({label: [unit_table(r, metric, summary, images) for r in groups[label]]
                                   for label in (ref, changed)})
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


def track_table(track: str, runs: list[RunRecord]):
    """One image-conditioned track: per method, each of its metrics on the final model and right after each
    concept's task (learning), with 95 % intervals and ★/≈ marks as in the interval tables."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: track in (r.data.get("tracks") or {}))
    names = list(dict.fromkeys(m for g in by_label.values() for r in g for m in r.data["tracks"][track]["matrices"]))
    columns, cells = ["method", "seeds"], {}
    for name in names:
        cells[name], _ = _interval_columns(f"{track}/{name}", by_label, ("final", "learning"))
        columns += [f"{name} final", f"{name} learning"]
    rows = []
    for label, group in by_label.items():
        row: dict[str, Any] = {"method": label, "seeds": len(group)}
        for name in names:
            for key in ("final", "learning"):
                row[f"{name} {key}"] = cells[name][key].get(label, "–")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns, dtype=object)


NEGLECT_COLUMNS = ("final", "first", "change")


def neglect_table(runs: list[RunRecord]):
    """The concept-neglect rate per method (×100, lower is better): per multi-concept prompt on the final
    model, then the mean at the end, at first availability, and their change; plus ``min_sim``, and the final
    rate and change of every exact presence check the runs have (``cnr_exact`` in the synthetic tier)."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: bool(r.data.get("neglect")))
    n_prompts = max((len(g[0].data["neglect"]["prompts"]) for g in by_label.values()), default=0)
    prompts = [f"q{q}" for q in range(n_prompts)]
    exact = sorted({m for g in by_label.values() for r in g for m in r.data["neglect"]["matrices"]} - {"cnr", "min_sim"})
    rows, keys = [], []
    for label, group in by_label.items():
        row: dict[str, Any] = {"method": label, "seeds": len(group), "storage": group[0].data["run_info"].get("storage")}
        for q, name in enumerate(prompts):
            row[name] = _fmt([_scaled(_last(r.data["neglect"]["matrices"]["cnr"], q)) for r in group])
        for key in NEGLECT_COLUMNS:
            row[f"cnr {key}"] = _fmt([_scaled(r.data["summary"].get("cnr", {}).get(key)) for r in group])
        row["min_sim final"] = _fmt([_scaled(r.data["summary"].get("min_sim", {}).get("final")) for r in group])
        for check in exact:
            for key in ("final", "change"):
                row[f"{check} {key}"] = _fmt([_scaled(r.data["summary"].get(check, {}).get(key)) for r in group])
        finals = [v for v in (r.data["summary"].get("cnr", {}).get("final") for r in group) if v is not None]
        keys.append(sum(finals) / len(finals) if finals else math.inf)
        rows.append(row)
    rows = [row for _, row in sorted(zip(keys, rows, strict=True), key=lambda kv: kv[0])]  # lower neglect first
    columns = ["method", "seeds", "storage", *prompts, *(f"cnr {k}" for k in NEGLECT_COLUMNS), "min_sim final",
               *(f"{check} {k}" for check in exact for k in ("final", "change"))]
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


COST = "cost"


def run_span(run: RunRecord):
    """The run's start and finish (datetimes), or None when either was not recorded."""
    from datetime import datetime

    info = run.data["run_info"]
    if not info.get("started") or not info.get("finished"):
        return None
    return datetime.fromisoformat(info["started"]), datetime.fromisoformat(info["finished"])


def _minutes(run: RunRecord) -> float | None:
    """Wall minutes from the run's start to its finish (a resumed run counts its pause too)."""
    span = run_span(run)
    return None if span is None else (span[1] - span[0]).total_seconds() / 60


def cost_table(runs: list[RunRecord]):
    """What each method costs per run, mean ± std over seeds, fastest first: wall, training and evaluation
    minutes, trainable parameters per task and parameters stored after the last task (thousands), peak
    resident memory (GiB), and the device it ran on. Times are only comparable between runs of one machine."""
    import pandas as pd

    by_label = runs_by_label(runs)
    rows, keys = [], []
    for label, group in by_label.items():
        tasks = [r.data.get("tasks") or [] for r in group]
        wall = [_minutes(r) for r in group]
        row: dict[str, Any] = {
            "method": label, "seeds": len(group), "storage": group[0].data["run_info"].get("storage"),
            "wall min": _fmt(wall),
            "train min": _fmt([sum(t.get("train_seconds") or 0 for t in ts) / 60 for ts in tasks]),
            "eval min": _fmt([sum(t.get("eval_seconds") or 0 for t in ts) / 60 for ts in tasks]),
            "trainable k/task": _fmt([sum(t.get("trainable_params") or 0 for t in ts) / len(ts) / 1e3
                                      for ts in tasks if ts]),
            "stored k": _fmt([ts[-1].get("stored_params", 0) / 1e3 for ts in tasks if ts]),
            "peak RSS GiB": _fmt([max(t.get("peak_rss_mb") or 0 for t in ts) / 1024 for ts in tasks if ts], digits=2),
            "device": ", ".join(sorted({str(r.data["run_info"]["config"].get("device")) for r in group})),
        }
        known = [w for w in wall if w is not None]
        keys.append(sum(known) / len(known) if known else math.inf)
        rows.append(row)
    rows = [row for _, row in sorted(zip(keys, rows, strict=True), key=lambda kv: kv[0])]
    return pd.DataFrame(rows, dtype=object).fillna("–")


def _last(rows, q):
    return rows[-1][q] if rows and q < len(rows[-1]) else None


def _scaled(v):
    return None if v is None else v * SCALE


def reference_rows(reference_results: dict[str, Any], metric: str, backbone: str = "SD-1.5") -> dict[str, list[float]]:
    """The paper's reported rows for ``metric``, labelled so nobody mistakes them for runs of this suite."""
    rows = reference_results.get("backbones", {}).get(backbone, {}).get(metric, {})
    return {f"[paper] {name} ({backbone}, reported)": values for name, values in rows.items()}


DEFAULT_METRICS = ("ia", "ta")  # always shown; every other metric the runs measured follows
NEGLECT = "cnr"


def leaderboard_tables(protocol: str, results_dir: Path, include_failed: bool = False, include_dirty: bool = False,
                       metrics: tuple[str, ...] | None = None, references: bool = True, cost: bool = True,
                       include_old_versions: bool = False):
    """{metric: DataFrame} for ``protocol``, plus the list of skipped result files with reasons.

    Without ``metrics``: ``ia`` and ``ta``, then every other per-concept metric the runs measured (``ia_dino``,
    a plugin's), then the neglect table (``cnr``) where any run has it. ``cost`` appends the compute table (wall time, parameters, memory) last.
    """
    from cifc_bench.core.protocol import load_protocol

    spec = load_protocol(protocol)
    concepts = [c["name"] for c in spec.raw["concepts"]]
    runs, skipped = find_runs(results_dir, spec.name, include_failed, include_dirty, include_old_versions,
                              protocol_version=spec.version)
    if metrics is None:
        from cifc_bench.evaluation.metrics import measured_metrics

        metrics = tuple(measured_metrics([r.data for r in runs], DEFAULT_METRICS))
        if any(r.data.get("neglect") for r in runs):
            metrics = (*metrics, NEGLECT)
    ref = spec.raw.get("reference_results", {}) if references else {}
    tables = {}
    for m in metrics:
        if m == NEGLECT:
            tables[m] = neglect_table(runs)
            if runs:
                tables[NEGLECT_INTERVALS] = neglect_interval_table(runs)
            continue
        tables[m] = metric_table(m, runs, concepts, reference_rows(ref, m) if ref else None)
        if runs:
            tables[m + INTERVALS] = interval_table(m, runs)
            effects = effects_table(m, runs)
            if len(effects):
                tables[EFFECTS + m] = effects
    for track in dict.fromkeys(t for r in runs for t in (r.data.get("tracks") or {})):
        tables[TRACK + track] = track_table(track, runs)
    if cost and runs:
        tables[COST] = cost_table(runs)
    return tables, skipped, len(runs)


def table_title(metric: str) -> str:
    """The heading of a leaderboard table: what it shows, its scale and how to read it."""
    if metric == NEGLECT:
        return ("CNR (x100, lower is better; q-columns are the final model's neglect rate per multi-concept prompt)")
    if metric == COST:
        return "COST (per run, mean ± std over seeds; times depend on the machine and on what else ran on it)"
    if metric.startswith(TRACK):
        return (f"{metric.removeprefix(TRACK).upper()} TRACK: mean [95 % interval] over seeds and units (the track's "
                "outputs where every run has per-output scores, else its concepts; x100; PSNR in dB; learning: right "
                "after each concept's task)")
    if metric == NEGLECT_INTERVALS:
        return ("NEGLECT on the final model: mean [95 % interval] (x100, lower is better; units: the final "
                "multi-concept images where every run has them, else the prompts; ★ lowest, ≈ not distinguishable "
                "from it)")
    if metric.startswith(EFFECTS):
        return (f"{metric.removeprefix(EFFECTS).upper()}: the change one argument makes, changed − reference, mean "
                "[95 % interval] (x100; paired by unit, and by seed where both have runs at the same seeds, 'N paired'; "
                "bootstrapped over seeds; * the interval excludes 0), "
                "and what the method's paper reports for it")
    if metric.endswith(INTERVALS):
        return (f"{metric.removesuffix(INTERVALS).upper()}: mean [95 % interval] (x100; crossed bootstrap over seeds "
                "and units, paired by unit: images (concept, prompt, seed) where every run has per-image scores, "
                "else concepts; ★ best, ≈ not distinguishable from it)")
    return f"{metric.upper()} (x100; per-concept columns are the final model's scores)"


def render(tables: dict[str, Any], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {FORMATS}")
    if fmt == "csv":  # one machine-readable table, the metric as a column
        import pandas as pd

        frames = [df.assign(metric=metric) for metric, df in tables.items()]
        return pd.concat(frames, ignore_index=True).to_csv(index=False)
    parts = []
    for metric, df in tables.items():
        title = table_title(metric)
        if fmt == "md":
            parts.append(f"### {title}\n\n" + df.to_markdown(index=False, disable_numparse=True))
        else:
            parts.append(df.to_latex(index=False, caption=title, label=f"tab:{metric}", escape=True))
    return "\n\n".join(parts) + "\n"
