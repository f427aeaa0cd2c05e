"""Results as data: every run's numbers as one tidy pandas DataFrame, for your own analysis and plots.

One row per run × metric × cell, with the run's identity columns (protocol and version, method, arguments, seed,
status, the run's identity digest), at one of three levels::

    df = load_results(["results"], level="summary")   # metric, summary (final, learning, forgetting, ...), value
    df = load_results(["results"], level="matrix")    # metric, task, concept, value: R[task][concept]
    df = load_results(["results"], level="image")     # metric, task, concept, image, value: each image's score

Per-concept metrics are named as in ``result.json`` (``ia``, ``identity_acc``), a track's as ``<track>/<metric>``
and the neglect checks as ``neglect/<check>``, whose ``concept`` is the multi-concept prompt (``q0``, ``q1``, ...).
Tasks and concepts are named, never only numbered: ``task`` is the index of the model state (0 = after the first
task) and ``task_name`` the concept learned then. ``cifc-bench export`` writes the same frames as parquet or csv.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LEVELS = ("summary", "matrix", "image")
RUN_COLUMNS = ("run", "protocol", "protocol_version", "method", "method_args", "method_version", "seed", "task_order",
               "status", "identity")


def load_results(paths: Iterable[str | Path] | str | Path, level: str = "summary", protocol: str | None = None,
                 **leaderboard_filters: bool):
    """A tidy DataFrame of every ``result.json`` under ``paths`` (folders or files) at ``level``. With
    ``protocol``, the runs are exactly those its leaderboard counts (completed, clean, this protocol version and
    method version, newest weights, each identity once; ``include_failed=True`` and the other flags of
    :func:`cifc_bench.reporting.runs.find_runs` bring the rest back)."""
    import pandas as pd

    if level not in LEVELS:
        raise ValueError(f"level={level!r}: use one of {LEVELS}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = _result_files(paths)
    if protocol is not None:
        from cifc_bench.core.protocol import load_protocol
        from cifc_bench.reporting.runs import find_runs

        spec = load_protocol(protocol)
        kept, _ = find_runs(paths, spec.name, protocol_version=spec.version, **leaderboard_filters)
        chosen = {r.path.resolve() for r in kept}
        files = [f for f in files if f.resolve() in chosen]
    rows: list[dict[str, Any]] = []
    for file in files:
        data = json.loads(file.read_text())
        run = _run_columns(file, data)
        rows += [{**run, **cell} for cell in _cells(data, level)]
    columns = [*RUN_COLUMNS, "metric", *{"summary": ["summary"], "matrix": ["task", "task_name", "concept"],
                                          "image": ["task", "task_name", "concept", "image"]}[level], "value"]
    return pd.DataFrame(rows, columns=columns)


def _result_files(paths: list[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob("result.json"))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder; give result.json files or folders holding runs")
    return files


def _run_columns(file: Path, data: dict[str, Any]) -> dict[str, Any]:
    from cifc_bench.core.results import run_identity
    from cifc_bench.reporting.runs import RunRecord

    info = data["run_info"]
    return {"run": str(file.parent), "protocol": info["protocol"]["name"],
            "protocol_version": str(info["protocol"].get("version")), "method": info["method"],
            "method_args": json.dumps(info.get("method_args") or {}, sort_keys=True),
            "method_version": int(info.get("method_version", 1)), "seed": info.get("seed", info["config"].get("seed")),
            "task_order": RunRecord(file, data).task_order,
            "status": data.get("status"), "identity": run_identity(data)}


def _matrices(data: dict[str, Any]) -> dict[str, tuple[list[list], list[str]]]:
    """Every T×C matrix of a result by metric name, with its column labels."""
    concepts = list(data.get("concepts") or [])
    out = {m: (rows, concepts) for m, rows in (data.get("matrices") or {}).items()}
    for track, part in (data.get("tracks") or {}).items():
        out.update({f"{track}/{m}": (rows, concepts) for m, rows in part.get("matrices", {}).items()})
    neglect = data.get("neglect") or {}
    prompts = [f"q{q}" for q in range(len(neglect.get("prompts") or []))]
    out.update({f"neglect/{m}": (rows, prompts) for m, rows in (neglect.get("matrices") or {}).items()})
    return out


def _cells(data: dict[str, Any], level: str) -> Iterable[dict[str, Any]]:
    concepts = list(data.get("concepts") or [])
    task_name = {j: c for j, c in enumerate(concepts)}
    if level == "summary":
        for metric, values in (data.get("summary") or {}).items():
            for name, value in (values or {}).items():
                yield {"metric": metric, "summary": name, "value": value}
        return
    if level == "matrix":
        for metric, (rows, labels) in _matrices(data).items():
            for j, row in enumerate(rows):
                for i, value in enumerate(row):
                    if value is not None:
                        yield {"metric": metric, "task": j, "task_name": task_name.get(j), "concept": labels[i],
                               "value": value}
        return
    per_image = {m: cells for m, cells in (data.get("per_image") or {}).items()}
    for track, part in (data.get("tracks") or {}).items():
        per_image.update({f"{track}/{m}": cells for m, cells in (part.get("per_image") or {}).items()})
    for metric, cells in per_image.items():
        for key, values in cells.items():
            j, i = map(int, key.split(","))
            for k, value in enumerate(values):
                yield {"metric": metric, "task": j, "task_name": task_name.get(j), "concept": concepts[i], "image": k,
                       "value": value}
    neglect = data.get("neglect") or {}
    last = len(concepts) - 1
    for check, prompts in (neglect.get("per_image") or {}).items():  # each final image neglected (1) or not (0)
        for q, flags in prompts.items():
            for k, flag in enumerate(flags):
                yield {"metric": f"neglect/{check}", "task": last, "task_name": task_name.get(last),
                       "concept": f"q{q}", "image": k, "value": float(flag)}


def export(paths: Iterable[str | Path], out: Path, level: str = "matrix", fmt: str | None = None) -> tuple[Path, int]:
    """Write :func:`load_results` to ``out`` as parquet or csv (``fmt``, else from the suffix); returns the file
    and its number of rows."""
    fmt = fmt or Path(out).suffix.lstrip(".")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"format {fmt!r}: use parquet or csv (--format, or an --out ending in .parquet or .csv)")
    frame = load_results(paths, level)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame.to_parquet(tmp, index=False) if fmt == "parquet" else frame.to_csv(tmp, index=False)
    tmp.replace(out)
    return out, len(frame)
