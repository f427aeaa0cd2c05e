"""The task-order table: how much the order in which a method learns the concepts moves its final score, beside
how much the training seed does. Continual-learning results depend on the order (a concept learned last has had
no chance to be forgotten), so a claim about a method holds only where order does not move it.

Each order of a method is compared with the protocol's order, paired concept by concept (units in the protocol's
order: :func:`~cifc_bench.reporting.intervals.summary_units`), seeds drawn separately; "moves" means that some
order's difference excludes 0 at 95 % (each order on its own, uncorrected for the number of orders)."""

from __future__ import annotations

import math
from typing import Any

from cifc_bench.core.task_order import PROTOCOL
from cifc_bench.reporting.intervals import summary_units
from cifc_bench.reporting.runs import REFERENCE_MARK, RunRecord, run_matrix, run_summary

ORDERS = "orders:"


def in_one_order(runs: list[RunRecord], task_order: str = PROTOCOL) -> list[RunRecord]:
    """The runs a leaderboard ranks: those learned in ``task_order``. Runs of other orders are compared only in the
    order tables: pooled with the rest, every row's forgetting would shrink to the concepts that no order learned
    last (the concept learned last has none, and units are shared by all rows), and a ★ or a win could go to an
    order that no other method ran."""
    return [r for r in runs if r.task_order == task_order]


def method_label(run: RunRecord) -> str:
    """The run's leaderboard label without its order: the row the orders of one method share."""
    return run.label.replace(f" [order {run.task_order}]", "")


def by_method_and_order(runs: list[RunRecord], metric: str) -> dict[str, dict[str, list[RunRecord]]]:
    """{method label: {order: runs}} for the methods run in at least two orders, one of them the protocol's."""
    out: dict[str, dict[str, list[RunRecord]]] = {}
    for r in runs:
        if run_matrix(r, metric) is not None and REFERENCE_MARK not in r.label:
            out.setdefault(method_label(r), {}).setdefault(r.task_order, []).append(r)
    return {m: dict(sorted(o.items(), key=lambda kv: kv[0] != PROTOCOL)) for m, o in out.items()
            if len(o) > 1 and PROTOCOL in o}


def _seed_spread(groups: dict[str, list[RunRecord]], metric: str) -> float | None:
    """The standard deviation of the final score over seeds, pooled over the orders (×100)."""
    finals = [[100 * f for r in g if (f := run_summary(r, metric).get("final")) is not None] for g in groups.values()]
    dof = sum(len(f) - 1 for f in finals)
    if dof < 1:
        return None
    return math.sqrt(sum(sum((v - sum(f) / len(f)) ** 2 for v in f) for f in finals if f) / dof)


def order_table(metric: str, runs: list[RunRecord]):
    """A DataFrame with a row per method run in several orders (None when there is none): its final score in
    each order, the spread over orders (largest − smallest order mean) and over seeds (pooled std), each order's
    effect against the protocol's order with its 95 % interval, and the orders whose effect excludes 0."""
    import pandas as pd

    from cifc_bench.evaluation import stats

    rows: list[dict[str, Any]] = []
    for label, groups in by_method_and_order(runs, metric).items():
        tables = summary_units(groups, metric, "final")
        if PROTOCOL not in tables or len(tables) < 2:
            continue
        means = {order: 100 * float(t.mean()) for order, t in tables.items()}
        effects = {order: stats.paired_difference(t, tables[PROTOCOL]) for order, t in tables.items()
                   if order != PROTOCOL}
        seeds = _seed_spread(groups, metric)
        rows.append({
            "method": label,
            "orders": len(tables),
            "seeds per order": "/".join(str(len(groups[o])) for o in tables),
            "final by order": ", ".join(f"{o} {v:.1f}" for o, v in means.items()),
            "spread over orders": f"{max(means.values()) - min(means.values()):.1f}",
            "spread over seeds": "–" if seeds is None else f"{seeds:.1f}",
            "each order − protocol": "; ".join(f"{o} {100 * e.mean:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"
                                               for o, e in effects.items()),
            "order moves final at 95 %": ", ".join(o for o, d in effects.items() if d.excludes(0)) or "no",
        })
    return pd.DataFrame(rows) if rows else None
