"""``cifc-bench leaderboard --format html``: one page with every leaderboard table and the pictures that say
more than they do.

- **Plasticity and stability**: each method's learning (the diagonal: how well a concept is learned) against
  its forgetting, with 95 % intervals on both axes; runs of one method that differ in one numeric argument (an
  EWC or C-LoRA λ sweep) are joined into a curve, labelled with the values.
- **Matrices**: a metric's T×T matrix of every method side by side, averaged over its seeds.
- **Neglect**: each method's final concept-neglect rate(s) with 95 % intervals over seeds and prompts.

The page is ``out/index.html`` with its figures in ``out/assets`` and nothing from elsewhere, written
atomically like the run report.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench.core.task_order import PROTOCOL
from cifc_bench.reporting.intervals import neglect_units, paired_units, summary_units
from cifc_bench.reporting.leaderboard import leaderboard_tables, table_title
from cifc_bench.reporting.orders import in_one_order
from cifc_bench.reporting.runs import RunRecord, find_runs, run_matrix, runs_by_label

PLASTICITY_METRICS = ("identity_acc", "ia")  # the first one the runs measured is plotted


def write_leaderboard_page(protocol: str, results_dir, out: Path, include_failed: bool = False,
                           include_dirty: bool = False, include_old_versions: bool = False,
                           references: bool = True, task_order: str = PROTOCOL) -> Path:
    """Write the page for ``protocol``'s runs under ``results_dir`` (its plots and tables rank the runs learned in
    ``task_order``; its order tables compare every order); returns ``out/index.html``."""
    from cifc_bench.core.atomic import atomic_directory
    from cifc_bench.core.protocol import load_protocol

    spec = load_protocol(protocol)
    tables, skipped, n = leaderboard_tables(protocol, results_dir, include_failed, include_dirty,
                                            references=references, include_old_versions=include_old_versions,
                                            task_order=task_order)
    runs = in_one_order(find_runs(results_dir, spec.name, include_failed, include_dirty, include_old_versions,
                                  protocol_version=spec.version)[0], task_order)
    out = Path(out)
    with atomic_directory(out) as tmp:
        assets = tmp / "assets"
        assets.mkdir()
        body = _body(spec.name, runs, tables, skipped, n, assets)
        (tmp / "index.html").write_text(_PAGE.format(title=html.escape(f"cifc-bench leaderboard: {spec.name}"),
                                                     css=_CSS, body=body), encoding="utf-8")
    return out / "index.html"


def _body(protocol: str, runs: list[RunRecord], tables: dict[str, Any], skipped: list[str], n: int,
          assets: Path) -> str:
    parts = [f"<h1>cifc-bench leaderboard: {html.escape(protocol)}</h1>",
             f"<p class='muted'>{n} run(s); {len(skipped)} left out (listed at the end).</p>"]
    figures = []
    metric = next((m for m in PLASTICITY_METRICS if any(run_matrix(r, m) is not None for r in runs)), None)
    if metric and plasticity_plot(runs, metric, assets / "plasticity.png"):
        figures.append(("plasticity", f"Plasticity and stability ({metric})", "plasticity.png",
                        f"learning against forgetting of {metric} per method"))
    if metric and matrix_grid(runs, metric, assets / "matrices.png"):
        figures.append(("matrices", f"{metric} matrices, mean over seeds", "matrices.png",
                        f"{metric} matrices of every method"))
    if neglect_plot(runs, assets / "neglect.png"):
        figures.append(("neglect", "Concept neglect", "neglect.png", "final neglect rate per method"))
    if figures:
        parts.append("<nav>" + " · ".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t, _, _ in figures)
                     + " · <a href='#tables'>tables</a></nav>")
    for anchor, title, name, alt in figures:
        parts.append(f"<h2 id='{anchor}'>{html.escape(title)}</h2><img src='assets/{name}' alt='{html.escape(alt)}'>")
    parts.append("<h2 id='tables'>Tables</h2>")
    for key, df in tables.items():
        parts.append(f"<h3>{html.escape(table_title(key))}</h3>" + df.to_html(index=False, escape=True, border=0))
    if skipped:
        parts.append("<h2>Left out</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in skipped) + "</ul>")
    return "\n".join(parts)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval(group: list[RunRecord], metric: str, summary: str):
    """(mean, low, high) ×100 of a method's ``summary`` of ``metric`` over its seeds and units (images where
    its runs have per-image scores, else concepts), or None."""
    from cifc_bench.evaluation import stats

    table = summary_units({"": group}, metric, summary).get("")
    if table is None:
        return None
    iv = stats.interval(100.0 * table)
    return iv.mean, iv.low, iv.high


def _default_argument(method: str, key: str):
    """The value a method's argument takes when a run does not set it (from its constructor), or None."""
    import inspect

    from cifc_bench.core.registry import load_method

    try:
        parameter = inspect.signature(load_method(method).__init__).parameters.get(key)
    except Exception:  # not installed here
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def sweep_curves(labels: dict[str, list[RunRecord]]) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """{(method, argument): [(value, label), ...]}, sorted by value: per method and numeric argument, the
    largest set of labels that agree in every other argument (a run that leaves the argument out sits at the
    method's default), when it has two values or more. The points a sweep curve joins."""
    curves: dict[tuple[str, str], list[tuple[float, str]]] = {}
    by_method: dict[str, list[tuple[str, dict]]] = {}
    for label, group in labels.items():
        info = group[0].data["run_info"]
        by_method.setdefault(info["method"], []).append((label, info.get("method_args") or {}))
    for method, items in by_method.items():
        for key in sorted({k for _, args in items for k in args}):
            default = _default_argument(method, key)
            families: dict[tuple, dict[float, str]] = {}
            for label, args in items:
                value = args.get(key, default)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    others = tuple(sorted((k, str(v)) for k, v in args.items() if k != key))
                    families.setdefault(others, {}).setdefault(float(value), label)
            points = max(families.values(), key=len, default={})
            if len(points) >= 2:
                curves[(method, key)] = sorted(points.items())
    return curves


def plasticity_plot(runs: list[RunRecord], metric: str, path: Path) -> bool:
    """Learning (x) against forgetting (y) per method label, with 95 % intervals; sweeps as curves."""
    labels = runs_by_label(runs, lambda r: run_matrix(r, metric) is not None)
    points = {}
    for label, group in labels.items():
        x, y = _interval(group, metric, "learning"), _interval(group, metric, "forgetting")
        if x is not None and y is not None:
            points[label] = (x, y)
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10.0, 5.2))
    methods = list(dict.fromkeys(labels[label][0].data["run_info"]["method"] for label in points))
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    shown: dict[str, int] = {}
    for label, (x, y) in points.items():  # one colour per method, one marker per configuration of it
        method = labels[label][0].data["run_info"]["method"]
        marker = "os^Dv<>PX*hp"[shown.get(method, 0) % 12]
        shown[method] = shown.get(method, 0) + 1
        ax.errorbar(x[0], y[0], xerr=[[x[0] - x[1]], [x[2] - x[0]]], yerr=[[y[0] - y[1]], [y[2] - y[0]]],
                    fmt=marker, color=palette(methods.index(method) % palette.N), capsize=3, label=label)
    for (_, key), members in sweep_curves(labels).items():
        pts = [(points[label][0][0], points[label][1][0], value) for value, label in members if label in points]
        if len(pts) >= 2:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.5", lw=1, zorder=0)
            for px, py, value in pts:
                ax.annotate(f"{key}={value:g}", (px, py), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel(f"learning: {metric} right after each concept's task (×100, higher is better)")
    ax.set_ylabel("forgetting: drop to the final model (×100, lower is better)")
    ax.set_title(f"plasticity and stability ({metric}; 95 % intervals over seeds and images or concepts)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(fig)
    return True


def matrix_grid(runs: list[RunRecord], metric: str, path: Path) -> bool:
    """Every method's ``metric`` matrix (mean over its seeds) side by side on one colour scale."""
    labels = runs_by_label(runs, lambda r: run_matrix(r, metric) is not None)
    means = {}
    for label, group in labels.items():
        stack = np.array([[[np.nan if v is None else v for v in row] for row in run_matrix(r, metric)] for r in group],
                         dtype=float)
        with warnings.catch_warnings():  # cells no seed measured (the upper triangle) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            means[label] = 100.0 * np.nanmean(stack, axis=0) if not np.isnan(stack).all() else None
    means = {k: v for k, v in means.items() if v is not None}
    if not means:
        return False
    plt = _plt()
    cols = min(4, len(means))
    rows = -(-len(means) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    finite = np.concatenate([m[~np.isnan(m)] for m in means.values()])
    low, high = float(finite.min()), float(finite.max())
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= len(means):
            ax.axis("off")
            continue
        label, R = list(means.items())[k]
        image = ax.imshow(np.ma.masked_invalid(R), vmin=low, vmax=high, cmap="viridis")
        ax.set_title(label, fontsize=7)
        ax.set_xlabel("concept", fontsize=6)
        ax.set_ylabel("after task", fontsize=6)
        ax.tick_params(labelsize=5)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=f"{metric} ×100")
    fig.suptitle(f"{metric}: R[j][i], concept i after task j (mean over seeds)", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def neglect_plot(runs: list[RunRecord], path: Path) -> bool:
    """Each method's final neglect rates (``cnr`` and every exact check) with 95 % intervals over seeds and the
    final multi-concept images (or prompts, for runs made before per-image flags were kept)."""
    from cifc_bench.evaluation import stats

    labels = runs_by_label(runs, lambda r: bool(r.data.get("neglect")))
    checks = list(dict.fromkeys(m for g in labels.values() for r in g for m in r.data["neglect"]["matrices"]
                                if m != "min_sim"))
    bars: dict[str, dict[str, Any]] = {}
    for check in checks:
        images = all(check in (r.data["neglect"].get("per_image") or {}) for g in labels.values() for r in g)
        tables = paired_units({label: [neglect_units(r, check, images) for r in group]
                               for label, group in labels.items()})
        for label, table in tables.items():
            iv = stats.interval(table)
            bars.setdefault(label, {})[check] = (iv.mean, max(iv.low, 0.0), min(iv.high, 100.0))
    if not bars:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(bars) + 2), 4.2))
    width = 0.8 / max(len(checks), 1)
    for c, check in enumerate(checks):
        xs, ms, errs = [], [], [[], []]
        for k, label in enumerate(bars):
            if check in bars[label]:
                m, lo, hi = bars[label][check]
                xs.append(k + c * width)
                ms.append(m)
                errs[0].append(m - lo)
                errs[1].append(hi - m)
        ax.bar(xs, ms, width, yerr=errs, capsize=3, label=check)
    ax.set_xticks([k + width * (len(checks) - 1) / 2 for k in range(len(bars))])
    ax.set_xticklabels(list(bars), rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("final neglect rate ×100 (lower is better)")
    ax.set_title("concept neglect on the final model (95 % intervals over seeds and images)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 0.95em; margin-top: 1.2em; }
table { border-collapse: collapse; font-size: 0.8em; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; }
th { background: #f3f3f3; } img { max-width: 100%; } .muted { color: #777; font-size: 0.85em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang='en'><head><meta charset='utf-8'><title>{title}</title>
<meta name='viewport' content='width=device-width, initial-scale=1'><style>{css}</style></head>
<body>
{body}
</body></html>
"""
