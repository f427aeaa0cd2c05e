"""Score a finished (or partial) run again from the images it saved, without training or generating.

Scores are a function of the saved images and the scorer. When the scorer changes (new weights of the
synthetic scorer, a different CLIP), every run can be brought to the new scorer in seconds instead of being
re-run; the result records which scorer made its numbers and what they were before::

    result = rescore_run(Path("results/synth10/finetune/20261127-055734-s0"))
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cifc_bench.core.config import ConfigError, RunSpec
from cifc_bench.core.progress import progress
from cifc_bench.core.results import (
    RESULT_FILE,
    git_info,
    now,
    read_result,
    write_json_atomic,
)
from cifc_bench.evaluation import metrics


def rescore_run(run_dir: Path, scorer: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Recompute every matrix row the run evaluated (and its neglect matrices, with thresholds calibrated for
    the scorer) from the run's saved images; write the result atomically and return it.

    ``scorer`` replaces the run's scorer name (default: the same name, i.e. its current weights). Fails with
    :class:`ConfigError`, leaving the result file untouched, when an image the run evaluated is missing.
    """
    from cifc_bench.evaluation.eval_requests import evaluated_after
    from cifc_bench.evaluation.evaluate import evaluate_task
    from cifc_bench.run.rundir import new_neglect
    from cifc_bench.run.setup import load_context, scorer_fingerprint

    run_dir = Path(run_dir)
    result = read_result(run_dir)
    info = result["run_info"]
    stored = RunSpec.from_dict(info["config"])
    config = dataclasses.replace(stored, scorer=scorer or stored.scorer, device=device or stored.device)
    ctx = load_context(config, run_dir, with_method=False)
    n_tasks, done = len(ctx.sequence.tasks), len(result["tasks"])
    if [c.name for c in ctx.sequence.concepts] != result["concepts"]:
        raise ConfigError(f"{run_dir}: the protocol's concepts {[c.name for c in ctx.sequence.concepts]} differ from "
                          f"the run's {result['concepts']}; it was made with another version of {stored.protocol!r}")
    previous = {"scorer": info.get("scorer"), "scorer_fingerprint": info.get("scorer_fingerprint"),
                "summary": result.get("summary")}
    rows = [j for j in range(done) if evaluated_after(config, j, n_tasks)]
    result["matrices"] = {m: [[None] * n_tasks for _ in range(n_tasks)] for m in ctx.metrics}
    result.pop("per_image", None)  # scored anew below, for runs made before it existed too
    if result.get("neglect") is not None:  # thresholds calibrated for this scorer, matrices empty
        result["neglect"] = new_neglect(ctx)
    references: dict = {}
    for j in progress(rows, desc=f"rescore {run_dir.name}"):
        evaluate_task(ctx, result, j, references)
    result["summary"] = metrics.summarize_result(result)
    info["scorer"] = info["config"]["scorer"] = config.scorer
    info["scorer_fingerprint"] = scorer_fingerprint(ctx.scorer)
    info.setdefault("rescores", []).append({**previous, "at": now(), "git": git_info()})
    write_json_atomic(run_dir / RESULT_FILE, result)
    return result
