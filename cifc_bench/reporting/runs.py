"""The runs a leaderboard counts and what it reads from each: found under results folders, once per
identity, on the current method versions and one set of base-model and scorer weights; their matrices, per-image
cells, summaries and wall time."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifc_bench.core.config import SHARED
from cifc_bench.core.results import RESULT_FILE, SCHEMA_VERSION
from cifc_bench.core.task_order import PROTOCOL, permutation

REFERENCE_MARK = "[reference, not ranked]"  # a method that breaks the rules on purpose (replay)


SCALE = 100.0


SUMMARY_COLUMNS = ("final", "avg_incremental", "learning", "forgetting", "forgetting_max", "bwt")


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
        order = self.task_order
        label = label if order == PROTOCOL else f"{label} [order {order}]"
        label = f"{label} [SDXL]" if info.get("model_family") == "sdxl" else label
        label = f"{label} {REFERENCE_MARK}" if info.get("reference") else label
        return f"{label} {self.note}" if self.note else label

    @property
    def task_order(self) -> str:
        return self.data["run_info"].get("config", {}).get("task_order") or PROTOCOL  # runs before --task-order

    @property
    def protocol_positions(self) -> tuple[int, ...]:
        """Where each of the run's concepts, in the order it learned them, stands in its protocol."""
        return permutation(self.task_order, len(self.data["concepts"]))

    def final_score(self, metric: str, name: str) -> float | None:
        """The final model's score of concept ``name`` (found by name: the matrices' columns are in the order the
        run learned); None when the run has no such concept."""
        concepts = self.data["concepts"]
        return self.data["matrices"][metric][-1][concepts.index(name)] if name in concepts else None

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
        later = (*info.get("resumed", ()), *info.get("rescores", ()), *info.get("tracks_added", ()),
                 *((info["retention_added"],) if info.get("retention_added") else ()))
        if any(g.get("dirty") for g in (info.get("git", {}), *(r.get("git", {}) for r in later))) and not include_dirty:
            skipped.append(f"{path}: run (or its resumption, rescoring, or tracks or retention added later) from a "
                           "dirty source tree (use --include-dirty)")
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


def format_values(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_summary(run: RunRecord, metric: str) -> dict[str, float | None]:
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


def run_seed(run: RunRecord) -> int:
    return run.data["run_info"].get("seed", 0)


def run_span(run: RunRecord):
    """The run's start and finish (datetimes), or None when either was not recorded."""
    from datetime import datetime

    info = run.data["run_info"]
    if not info.get("started") or not info.get("finished"):
        return None
    return datetime.fromisoformat(info["started"]), datetime.fromisoformat(info["finished"])


def run_minutes(run: RunRecord) -> float | None:
    """Wall minutes from the run's start to its finish (a resumed run counts its pause too)."""
    span = run_span(run)
    return None if span is None else (span[1] - span[0]).total_seconds() / 60


def last_value(rows, q):
    return rows[-1][q] if rows and q < len(rows[-1]) else None


def scaled_value(v):
    return None if v is None else v * SCALE
