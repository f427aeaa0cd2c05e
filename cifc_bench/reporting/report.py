"""``cifc-bench report RUN_DIR [RUN_DIR ...]``: a self-contained HTML page of one run, or several side by side.

Continual-learning results are read as pictures: the after-each-task matrices as heat-maps, one forgetting
curve per concept, sample grids that show a concept across model states (the same seeds in every state, so
fading is visible), multi-concept samples with their boxes marked present or missing, and the run's config
and timings. Everything is drawn with matplotlib into ``<out>/assets/`` and referenced relatively, so the
folder can be copied, archived or opened offline::

    write_report([Path("results/synth10/finetune/20261127-s0")], Path("report"))
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from cifc_bench.reporting.report_figures import (
    ReportRun,
    forgetting_curves,
    heatmap,
    load_runs,
    metric_matrix,
    multi_samples,
    retention_plot,
    sample_grid,
    timings_plot,
    track_samples,
)

# ----------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg). Each returns the file name it wrote under ``assets``.


def _track_table(run: ReportRun, track: str) -> str:
    from cifc_bench.evaluation.metrics import display_scale, track_key

    part = run.result["tracks"][track]
    rows = []
    for name in part["matrices"]:
        s = run.result.get("summary", {}).get(track_key(track, name), {})
        scale, unit = display_scale(name)
        rows.append(f"<tr><td class='l'>{_esc(name)} ({_esc(unit)})</td><td>{_fmt(s.get('final'), scale)}</td>"
                    f"<td>{_fmt(s.get('learning'), scale)}</td><td>{_fmt(s.get('forgetting'), scale)}</td></tr>")
    return ("<table><tr><th class='l'>metric</th><th>final</th><th>learning</th><th>forgetting</th></tr>"
            + "".join(rows) + "</table>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1500px;color:#222;padding:0 1em}
h1{font-size:1.4em} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:.8em 0 .3em}
.row{display:flex;gap:1.2em;flex-wrap:wrap;align-items:flex-start} .cell{flex:1 1 0;min-width:300px}
.cell img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0} td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .muted{color:#777;font-size:.85em}
pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto;max-height:24em}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, scale: float = 100.0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.1f}"


def _summary_table(runs: list[ReportRun]) -> str:
    from cifc_bench.evaluation.metrics import measured_metrics

    metrics = [m for m in (*measured_metrics([r.result for r in runs]), "cnr", "min_sim")
               if any(m in r.result.get("summary", {}) for r in runs)]
    head = "".join(f"<th>{_esc(m)} {k}</th>" for m in metrics
                   for k in (("final", "change") if m in ("cnr", "min_sim") else ("final", "forgetting")))
    body = []
    for r in runs:
        s = r.result.get("summary", {})
        cells = "".join(f"<td>{_fmt(s.get(m, {}).get(k))}</td>" for m in metrics
                        for k in (("final", "change") if m in ("cnr", "min_sim") else ("final", "forgetting")))
        body.append(f"<tr><td class='l'>{_esc(r.label)}</td><td class='l'>{_esc(r.result['status'])}</td>"
                    f"<td>{r.done}/{len(r.concepts)}</td>{cells}</tr>")
    return (f"<table><tr><th class='l'>run</th><th class='l'>status</th><th>tasks</th>{head}</tr>"
            + "".join(body) + "</table><p class='muted'>scores ×100; forgetting = mean drop from just-learned to final "
            "(positive: forgot); cnr change = final minus first-available neglect rate (positive: neglect grew)</p>")


def _neglect_table(run: ReportRun) -> str:
    ng = run.result.get("neglect")
    if not ng:
        return ""
    C = metric_matrix(ng["matrices"]["cnr"])
    rows = []
    for q, p in enumerate(ng["prompts"]):
        col = C[: run.done, q]
        measured = [f"{100 * v:.0f}" for v in col if not math.isnan(v)]
        rows.append(f"<tr><td>{q}</td><td class='l'>{_esc(p['prompt'])}</td><td class='l'>"
                    f"{_esc(', '.join(p['concepts']))}</td><td class='l'>{' → '.join(measured) or '–'}</td></tr>")
    thr = ng.get("calibration", {}).get("thresholds", {})
    by_concept: dict[str, list[float]] = {}  # per prompt (a list) or, in older results, per concept
    for per_prompt in (thr if isinstance(thr, list) else [thr]):
        for c, v in per_prompt.items():
            by_concept.setdefault(c, []).append(v)
    miss = ng["miss_rate"][run.done - 1] if run.done else {}
    conc = "".join(f"<tr><td class='l'>{_esc(c)}</td><td>{' / '.join(f'{v:.3f}' for v in vs)}</td>"
                   f"<td>{_fmt(miss.get(c))}</td></tr>" for c, vs in sorted(by_concept.items()))
    return ("<table><tr><th>q</th><th class='l'>prompt</th><th class='l'>concepts</th>"
            "<th class='l'>cnr ×100 after each task, from first availability</th></tr>" + "".join(rows) + "</table>"
            "<table><tr><th class='l'>concept</th><th>presence threshold (per prompt)</th><th>final miss rate ×100</th></tr>"
            + conc + "</table>")


def _config_block(run: ReportRun) -> str:
    info = run.result["run_info"]
    keep = {k: info.get(k) for k in ("method", "method_args", "method_class", "storage", "protocol", "seed", "model",
                                      "scorer", "git", "started", "finished")}
    keep["config"] = info.get("config")
    rows = "".join(
        f"<tr><td>{t['index'] + 1}</td><td class='l'>{_esc(t['task'])}</td><td>{_fmt(t.get('train_seconds'), 1)}</td>"
        f"<td>{_fmt(t.get('eval_seconds'), 1)}</td><td>{_fmt(t.get('peak_rss_mb'), 1)}</td>"
        f"<td>{t.get('trainable_params', '–')}</td><td>{t.get('stored_params', '–')}</td></tr>"
        for t in run.result["tasks"])
    return ("<table><tr><th>task</th><th class='l'>concept</th><th>train s</th><th>eval s</th><th>peak RSS MB</th>"
            "<th>trainable</th><th>stored</th></tr>" + rows + "</table>"
            f"<pre>{_esc(json.dumps(keep, indent=1))}</pre>")


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write ``out/index.html`` with its figures in ``out/assets``; return the page's path."""
    from cifc_bench.core.atomic import atomic_directory

    runs = load_runs(run_dirs)
    out = Path(out)
    with atomic_directory(out) as tmp:
        assets = tmp / "assets"
        assets.mkdir()
        page = _page(runs, assets)
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


def _img(name: str, alt: str) -> str:
    return f"<img src='assets/{_esc(name)}' alt='{_esc(alt)}'>"


def _side_by_side(runs: list[ReportRun], cells: list[str]) -> str:
    inner = "".join(f"<div class='cell'>{'<h3>' + _esc(r.label) + '</h3>' if len(runs) > 1 else ''}{c}</div>"
                    for r, c in zip(runs, cells, strict=True))
    return f"<div class='row'>{inner}</div>"


def _page(runs: list[ReportRun], assets: Path) -> str:
    protocols = sorted({r.result["run_info"]["protocol"]["name"] for r in runs})
    parts = [f"<h1>cifc-bench report: {_esc(', '.join(protocols))}</h1>",
             f"<p class='muted'>{len(runs)} run(s): " + "; ".join(_esc(str(r.path)) for r in runs) + "</p>",
             "<h2 id='summary'>Summary</h2>", _summary_table(runs)]
    from cifc_bench.evaluation.metrics import measured_metrics

    metrics = [m for m in measured_metrics([r.result for r in runs]) if any(m in r.result["matrices"] for r in runs)]

    def by_metric(figures: list[tuple[str, str]]) -> str:
        """One row per metric with the runs side by side; a single run's metrics share one row."""
        if len(runs) == 1:
            return "<div class='row'>" + "".join(f"<div class='cell'><h3>{_esc(m)}</h3>{c}</div>"
                                                 for m, c in figures) + "</div>"
        return "".join(f"<h3>{_esc(m)}</h3>{c}" for m, c in figures)

    def per_metric(kind: str, draw, what: str) -> str:
        """For every metric, ``draw(matrix, run, path)`` per run into ``<kind>_<metric>_<run>.png``."""
        figures = []
        for m in metrics:
            cells = []
            for k, r in enumerate(runs):
                if m not in r.result["matrices"]:
                    cells.append("<p class='muted'>not measured</p>")
                    continue
                name = f"{kind}_{m}_{k}.png"
                draw(m, metric_matrix(r.result["matrices"][m]), r, assets / name)
                cells.append(_img(name, f"{m} {what} of {r.label}"))
            figures.append((m, _side_by_side(runs, cells)))
        return by_metric(figures)

    parts.append("<h2 id='matrices'>After-each-task matrices</h2>")
    parts.append(per_metric("heatmap", lambda m, R, r, path: heatmap(
        R, [f"{j + 1} {c}" for j, c in enumerate(r.concepts)], r.concepts, f"{m} ×100", path), "matrix"))
    cells = []
    for k, r in enumerate(runs):
        ng = r.result.get("neglect")
        if not ng:
            cells.append("<p class='muted'>no multi-concept prompts</p>")
            continue
        name = f"heatmap_cnr_{k}.png"
        heatmap(metric_matrix(ng["matrices"]["cnr"]), [f"{j + 1} {c}" for j, c in enumerate(r.concepts)],
                [f"q{q}" for q in range(len(ng["prompts"]))], "cnr ×100 (lower is better)", assets / name,
                limits=(0.0, 100.0))
        cells.append(_img(name, f"neglect matrix of {r.label}") + _neglect_table(r))
    parts.append("<h3>cnr</h3>" + _side_by_side(runs, cells))

    parts.append("<h2 id='forgetting'>Forgetting curves</h2>")
    parts.append(per_metric("curves", lambda m, R, r, path: forgetting_curves(R, r.concepts, m, path),
                            "forgetting curves"))

    parts.append("<h2 id='samples'>Samples across model states</h2><p class='muted'>rows: the concept's first "
                 "prompts, first seed; columns: the model after each task. The seeds are the same in every state.</p>")
    figures = []
    for i, concept in enumerate(runs[0].concepts):
        cells = []
        for k, r in enumerate(runs):
            name = f"samples_{i:02d}_{k}.png"
            ok = i < len(r.concepts) and sample_grid(r, i, assets / name)
            cells.append(_img(name, f"{concept} samples of {r.label}") if ok else "<p class='muted'>no images</p>")
        figures.append((concept, _side_by_side(runs, cells)))
    parts.append(by_metric(figures))

    parts.append("<h2 id='multi'>Multi-concept samples</h2>")
    cells = []
    for k, r in enumerate(runs):
        name = f"multi_{k}.png"
        ok = r.done > 0 and multi_samples(r, r.done - 1, assets / name)
        cells.append(_img(name, f"multi-concept samples of {r.label}") if ok else "<p class='muted'>none</p>")
    parts.append(_side_by_side(runs, cells))

    tracks = list(dict.fromkeys(t for r in runs for t in (r.result.get("tracks") or {})))
    if tracks:
        parts.append("<h2 id='tracks'>Tracks: style transfer and editing</h2><p class='muted'>each learned concept "
                     "of the track's kind redraws the same input images; learning: right after the concept's task</p>")
        for track in tracks:
            cells = []
            for k, r in enumerate(runs):
                if track not in (r.result.get("tracks") or {}):
                    cells.append("<p class='muted'>not measured</p>")
                    continue
                name = f"track_{track}_{k}.png"
                ok = r.done > 0 and track_samples(r, track, r.done - 1, assets / name)
                cells.append((_img(name, f"{track} samples of {r.label}") if ok else "<p class='muted'>no images</p>")
                             + _track_table(r, track))
            parts.append(f"<h3>{_esc(track)}</h3>" + _side_by_side(runs, cells))

    if any(r.result.get("retention") for r in runs):
        parts.append("<h2 id='retention'>Retention of the base model</h2><p class='muted'>the protocol's generic "
                     "prompts (no learned token) after each evaluated task: drift from the base model's own image of "
                     "the same prompt and seed, and the prompts' other scores</p>")
        cells = []
        for k, r in enumerate(runs):
            name = f"retention_{k}.png"
            ok = retention_plot(r, assets / name)
            cells.append(_img(name, f"retention of {r.label}") if ok else "<p class='muted'>not measured</p>")
        parts.append(_side_by_side(runs, cells))

    parts.append("<h2 id='config'>Config and timings</h2>")
    cells = []
    for k, r in enumerate(runs):
        name = f"timings_{k}.png"
        timings_plot(r, assets / name)
        cells.append(_img(name, f"timings of {r.label}") + _config_block(r))
    parts.append(_side_by_side(runs, cells))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>cifc-bench report</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
