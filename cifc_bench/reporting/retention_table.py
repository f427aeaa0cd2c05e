"""The retention table: how far each method moves the base model on prompts it was never taught
(:mod:`cifc_bench.evaluation.retention`), on the final model and as the change since the first evaluated state,
with 95 % intervals over seeds and images (paired by image across methods), and the methods each one differs
from at 95 %."""

from __future__ import annotations

from typing import Any

from cifc_bench.evaluation.retention import DRIFT, LOWER_IS_BETTER
from cifc_bench.reporting.intervals import interval_cells, paired_units
from cifc_bench.reporting.runs import RunRecord, runs_by_label

RETENTION_TABLE = "retention"
SCALE = 100.0


def retention_units(run: RunRecord, metric: str, summary: str):
    """One run's per-image values of a retention metric (×100): on the last evaluated state (``final``), or
    last − first (``change``); None when the run did not measure it."""
    import numpy as np

    cells = ((run.data.get("retention") or {}).get("per_image") or {}).get(metric)
    if not cells:
        return None
    states = sorted(cells, key=int)

    def values(j):
        return np.array([np.nan if v is None else v for v in cells[j]], dtype=float)

    last = values(states[-1])
    return SCALE * (last if summary == "final" else last - values(states[0]))


def retention_table(runs: list[RunRecord]):
    """A DataFrame with a row per method: each retention metric's final value and change with their intervals
    (★ best, ≈ not distinguishable from it) and, for the final value, the methods it differs from at 95 %;
    None when no run measured retention."""
    import pandas as pd

    from cifc_bench.evaluation import stats

    by_label = runs_by_label(runs, lambda r: bool(r.data.get("retention")))
    if not by_label:
        return None
    metrics = list(dict.fromkeys(m for g in by_label.values() for r in g for m in r.data["retention"]["metrics"]))
    columns = ["method", "seeds"]
    rows: dict[str, dict[str, Any]] = {label: {"method": label, "seeds": len(g)} for label, g in by_label.items()}
    for metric in metrics:
        higher = metric not in LOWER_IS_BETTER
        for summary in ("final", "change"):
            tables = paired_units({label: [retention_units(r, metric, summary) for r in group]
                                   for label, group in by_label.items()})
            bounds = (0.0, 2 * SCALE) if metric == DRIFT and summary == "final" else None  # 1 - a cosine
            cells = interval_cells(tables, higher_is_better=higher, bounds=bounds)
            columns.append(f"{metric} {summary}")
            for label, cell in cells.items():
                rows[label][f"{metric} {summary}"] = cell
            if summary == "final":
                columns.append(f"{metric} differs at 95 % from")
                for a in tables:
                    rows[a][f"{metric} differs at 95 % from"] = ", ".join(
                        b for b in tables if b != a and stats.paired_difference(tables[a], tables[b]).excludes(0.0)
                    ) or "none"
    return pd.DataFrame(list(rows.values()), columns=columns, dtype=object).fillna("–")
