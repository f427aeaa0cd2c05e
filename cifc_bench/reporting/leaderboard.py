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

import math
from pathlib import Path
from typing import Any

from cifc_bench.core.task_order import PROTOCOL
from cifc_bench.evaluation.metrics import DIRECTIONS
from cifc_bench.reporting.intervals import (
    EFFECTS,
    INTERVALS,
    NEGLECT_INTERVALS,
    effects_table,
    interval_columns,
    interval_table,
    neglect_interval_table,
)
from cifc_bench.reporting.orders import ORDERS, in_one_order, order_table
from cifc_bench.reporting.retention_table import RETENTION_TABLE, retention_table
from cifc_bench.reporting.runs import (
    REFERENCE_MARK,
    SUMMARY_COLUMNS,
    RunRecord,
    find_runs,
    format_values,
    last_value,
    run_minutes,
    run_summary,
    runs_by_label,
    scaled_value,
)

FORMATS = ("md", "csv", "latex")  # and "html": a page with plots (cifc_bench.reporting.leaderboard_page)


def metric_table(metric: str, runs: list[RunRecord], concepts: list[str], reference: dict[str, Any] | None):
    """One metric's DataFrame: a row per method (mean ± std over its runs), then the reference rows."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: metric in r.data["matrices"])
    rows, sort_keys = [], []
    for label, group in by_label.items():
        row: dict[str, Any] = {"method": label, "seeds": len(group), "storage": group[0].data["run_info"].get("storage")}
        for name in concepts:  # by name: a run in another task order holds its columns in that order
            row[name] = format_values([scaled_value(r.final_score(metric, name)) for r in group])
        summaries = [run_summary(r, metric) for r in group]
        for key in SUMMARY_COLUMNS:
            row[key] = format_values([scaled_value(s.get(key)) for s in summaries])
        finals = [scaled_value(s.get("final")) for s in summaries]
        finals = [f for f in finals if f is not None]
        sort_keys.append(sum(finals) / len(finals) if finals else -math.inf)
        rows.append(row)
    between = base_to_reference(dict(zip((r["method"] for r in rows), sort_keys, strict=True)))
    if between and not reference_above_base(metric, by_label):  # a scale whose ends coincide would mislead
        between = {label: NO_SCALE if REFERENCE_MARK in label else "–" for label in between}
    for row in rows if between else ():
        row[BETWEEN] = between.get(row["method"], "–")
    sign = -1 if DIRECTIONS["final"] == "higher" else 1
    rows = [row for _, row in sorted(zip(sort_keys, rows, strict=True), key=lambda kv: sign * kv[0])]
    for label, values in (reference or {}).items():
        row = {"method": label, "seeds": 1, "storage": "reported"}
        row.update({name: f"{v:.1f}" for name, v in zip(concepts, values[: len(concepts)], strict=False)})
        row["final"] = f"{values[len(concepts)]:.1f}" if len(values) > len(concepts) else "–"
        rows.append(row)
    columns = ["method", "seeds", "storage", *concepts, *SUMMARY_COLUMNS, *([BETWEEN] if between else [])]
    return pd.DataFrame(rows, columns=columns, dtype=object).fillna("–")


BETWEEN = "base→replay"  # each method's final as a fraction of the way from base (0) to the replay reference (1)


def bounding_reference(labels) -> str | None:
    """The replay row that bounds the scale: with several (``budget=task`` beside the default), the one with the
    fewest arguments."""
    references = sorted((label.count("="), label) for label in labels
                        if label.startswith("replay") and REFERENCE_MARK in label)
    return references[0][1] if references else None


def base_to_reference(finals: dict[str, float]) -> dict[str, str]:
    """Each method's mean final score placed between ``base`` (0) and the ``replay`` reference (1), as
    continual-learning suites read a method between the lower and the upper bound; empty unless both ran and
    differ."""
    low = finals.get("base")
    reference = bounding_reference(finals)
    high = finals[reference] if reference else None
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high) or abs(high - low) < 1e-9:
        return {}
    return {label: f"{(v - low) / (high - low):.2f}" for label, v in finals.items() if math.isfinite(v)}


NO_SCALE = "no scale: not above base at 95 %"


def reference_above_base(metric: str, by_label: dict[str, list[RunRecord]]) -> bool:
    """Whether the replay reference's final score is above ``base``'s at 95 % (paired by unit, as the interval
    tables): only then do the two ends make a scale. A reference that learns no more than the base model (as
    ``replay``'s first version did on ``synth10``: docs/findings/replay-budget.md) would put every method at a
    large multiple of nothing."""
    from cifc_bench.evaluation import stats
    from cifc_bench.reporting.intervals import summary_units

    reference = bounding_reference(by_label)
    if "base" not in by_label or reference is None:
        return False
    groups = {"base": by_label["base"], "replay": by_label[reference]}
    tables = summary_units(groups, metric, "final")
    if len(tables) < 2:
        return False
    gap = stats.paired_difference(tables["replay"], tables["base"])
    return gap.low > 0 if DIRECTIONS["final"] == "higher" else gap.high < 0


TRACK = "track:"  # prefix of a track's table in leaderboard_tables


def track_table(track: str, runs: list[RunRecord]):
    """One image-conditioned track: per method, each of its metrics on the final model and right after each
    concept's task (learning), with 95 % intervals and ★/≈ marks as in the interval tables."""
    import pandas as pd

    by_label = runs_by_label(runs, lambda r: track in (r.data.get("tracks") or {}))
    names = list(dict.fromkeys(m for g in by_label.values() for r in g for m in r.data["tracks"][track]["matrices"]))
    columns, cells = ["method", "seeds"], {}
    for name in names:
        cells[name], _ = interval_columns(f"{track}/{name}", by_label, ("final", "learning"))
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
            row[name] = format_values([scaled_value(last_value(r.data["neglect"]["matrices"]["cnr"], q)) for r in group])
        for key in NEGLECT_COLUMNS:
            row[f"cnr {key}"] = format_values([scaled_value(r.data["summary"].get("cnr", {}).get(key)) for r in group])
        row["min_sim final"] = format_values([scaled_value(r.data["summary"].get("min_sim", {}).get("final")) for r in group])
        for check in exact:
            for key in ("final", "change"):
                row[f"{check} {key}"] = format_values([scaled_value(r.data["summary"].get(check, {}).get(key)) for r in group])
        finals = [v for v in (r.data["summary"].get("cnr", {}).get("final") for r in group) if v is not None]
        keys.append(sum(finals) / len(finals) if finals else math.inf)
        rows.append(row)
    rows = [row for _, row in sorted(zip(keys, rows, strict=True), key=lambda kv: kv[0])]  # lower neglect first
    columns = ["method", "seeds", "storage", *prompts, *(f"cnr {k}" for k in NEGLECT_COLUMNS), "min_sim final",
               *(f"{check} {k}" for check in exact for k in ("final", "change"))]
    return pd.DataFrame(rows, columns=columns, dtype=object).fillna("–")


COST = "cost"


def cost_table(runs: list[RunRecord]):
    """What each method costs per run, mean ± std over seeds, fastest first: wall, training and evaluation
    minutes, trainable parameters per task and parameters stored after the last task (thousands), peak
    resident memory (GiB), and the device it ran on. Times are only comparable between runs of one machine."""
    import pandas as pd

    by_label = runs_by_label(runs)
    rows, keys = [], []
    for label, group in by_label.items():
        tasks = [r.data.get("tasks") or [] for r in group]
        wall = [run_minutes(r) for r in group]
        row: dict[str, Any] = {
            "method": label, "seeds": len(group), "storage": group[0].data["run_info"].get("storage"),
            "wall min": format_values(wall),
            "train min": format_values([sum(t.get("train_seconds") or 0 for t in ts) / 60 for ts in tasks]),
            "eval min": format_values([sum(t.get("eval_seconds") or 0 for t in ts) / 60 for ts in tasks]),
            "trainable k/task": format_values([sum(t.get("trainable_params") or 0 for t in ts) / len(ts) / 1e3
                                      for ts in tasks if ts]),
            "stored k": format_values([ts[-1].get("stored_params", 0) / 1e3 for ts in tasks if ts]),
            "peak RSS GiB": format_values([max(t.get("peak_rss_mb") or 0 for t in ts) / 1024 for ts in tasks if ts], digits=2),
            "device": ", ".join(sorted({str(r.data["run_info"]["config"].get("device")) for r in group})),
        }
        known = [w for w in wall if w is not None]
        keys.append(sum(known) / len(known) if known else math.inf)
        rows.append(row)
    rows = [row for _, row in sorted(zip(keys, rows, strict=True), key=lambda kv: kv[0])]
    return pd.DataFrame(rows, dtype=object).fillna("–")


def reference_rows(reference_results: dict[str, Any], metric: str, backbone: str = "SD-1.5") -> dict[str, list[float]]:
    """The paper's reported rows for ``metric``, labelled so nobody mistakes them for runs of this suite."""
    rows = reference_results.get("backbones", {}).get(backbone, {}).get(metric, {})
    return {f"[paper] {name} ({backbone}, reported)": values for name, values in rows.items()}


DEFAULT_METRICS = ("ia", "ta")  # always shown; every other metric the runs measured follows


NEGLECT = "cnr"


def leaderboard_tables(protocol: str, results_dir: Path, include_failed: bool = False, include_dirty: bool = False,
                       metrics: tuple[str, ...] | None = None, references: bool = True, cost: bool = True,
                       include_old_versions: bool = False, task_order: str = PROTOCOL):
    """{metric: DataFrame} for ``protocol``, plus the list of skipped result files with reasons.
    The tables rank the runs learned in ``task_order``; the order tables compare every order with the protocol's.

    Without ``metrics``: ``ia`` and ``ta``, then every other per-concept metric the runs measured (``ia_dino``,
    a plugin's), then the neglect table (``cnr``) where any run has it. ``cost`` appends the compute table (wall time, parameters, memory) last.
    """
    from cifc_bench.core.protocol import load_protocol

    spec = load_protocol(protocol)
    concepts = [c["name"] for c in spec.raw["concepts"]]
    every_order, skipped = find_runs(results_dir, spec.name, include_failed, include_dirty, include_old_versions,
                                     protocol_version=spec.version)
    runs = in_one_order(every_order, task_order)
    metrics_given = metrics
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
        paper = {}
        for backbone in ("SD-1.5", *(["SDXL"] if any(r.data["run_info"].get("model_family") == "sdxl" for r in runs)
                                     else [])):
            paper.update(reference_rows(ref, m, backbone) if ref else {})
        tables[m] = metric_table(m, runs, concepts, paper or None)
        if runs:
            tables[m + INTERVALS] = interval_table(m, runs)
            effects = effects_table(m, runs)
            if len(effects):
                tables[EFFECTS + m] = effects
            orders = order_table(m, every_order)
            if orders is not None:
                tables[ORDERS + m] = orders
    for track in dict.fromkeys(t for r in runs for t in (r.data.get("tracks") or {})):
        tables[TRACK + track] = track_table(track, runs)
    retention = retention_table(runs) if metrics_given is None else None
    if retention is not None:
        tables[RETENTION_TABLE] = retention
    if cost and runs:
        tables[COST] = cost_table(runs)
    return tables, skipped, len(every_order)


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
    if metric == RETENTION_TABLE:
        return ("RETENTION of the base model on the protocol's generic prompts (no learned token): drift (1 - the "
                "scorer's cosine to the base model's image of the same prompt and seed; lower is better) and the "
                "prompts' other metrics, on the final model and as the change since the first evaluated state, mean "
                "[95 % interval] over seeds and images (x100; ★ best, ≈ not distinguishable from it)")
    if metric.startswith(ORDERS):
        return (f"{metric.removeprefix(ORDERS).upper()} BY TASK ORDER: the final score in each order the method was "
                "run in (x100, mean over seeds and units), its spread over orders (largest - smallest) beside its "
                "spread over seeds (pooled std), and each order against the protocol's, paired by concept: the "
                "difference with its 95 % interval, and the orders whose difference excludes 0; runs of another "
                "order than the protocol's are compared only here (`--task-order ORDER` ranks one order's runs)")
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
