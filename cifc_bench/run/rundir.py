"""A run's folder: its result file as it starts, the lock that keeps one writer, the saved method states and
"the method after task j" restored from them (used by resume, added tracks, the evaluation worker and
``generate``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from cifc_bench.api import DivergenceError, Method
from cifc_bench.core.config import ConfigError
from cifc_bench.core.results import (
    RESULT_FILE,
    SCHEMA_VERSION,
    git_info,
    now,
    package_versions,
    run_identity,
)
from cifc_bench.diffusion.sdxl import family
from cifc_bench.evaluation.context import RunContext
from cifc_bench.evaluation.retention import new_retention
from cifc_bench.evaluation.tracks import new_tracks
from cifc_bench.run.setup import (
    build_method,
    fast_fp32_matmuls,
    fresh_bundle,
    resolve_run,
    scorer_fingerprint,
)


def state_path(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / "state" / f"after_task_{task_index:02d}.safetensors"


def training_time_path(state: Path) -> Path:
    """Beside a task's state, the seconds its training took: a resume that finds the state (trained before a
    kill, not yet evaluated) reports them, instead of a null that cost tables would count as no time. Apart
    from the state, which stays byte-identical from run to run."""
    return state.with_suffix(".json")


def recorded_train_seconds(state: Path) -> float | None:
    """The training seconds saved beside ``state``; None for a state saved before they were (or torn)."""
    import json

    try:
        return float(json.loads(training_time_path(state).read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def new_result(ctx: RunContext) -> dict[str, Any]:
    seq, T = ctx.sequence, len(ctx.sequence.tasks)
    empty = [[None] * T for _ in range(T)]
    result = {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "run_info": {
            "config": ctx.config.to_dict(),
            "method": ctx.config.method,
            "method_args": ctx.config.method_args,
            "method_hparams": ctx.method.hparams,  # every argument the method ran with, defaults included
            "method_class": f"{type(ctx.method).__module__}:{type(ctx.method).__qualname__}",
            "method_version": type(ctx.method).version,
            "schedule": {"name": ctx.config.schedule, "tasks": list(ctx.budgets)},
            "storage": ctx.method.storage,
            "reference": bool(type(ctx.method).reference),  # breaks the rules on purpose: shown apart, never ranked
            "protocol": {"name": seq.name, "version": seq.version, "file": str(seq.source)},
            "seed": ctx.config.seed,
            "model": ctx.config.model,
            "model_family": family(ctx.method.bundle),  # sd1 or sdxl: leaderboards never average the two
            "scorer": ctx.config.scorer,
            "scorer_fingerprint": scorer_fingerprint(ctx.scorer),
            "model_fingerprint": ctx.model_fingerprint,
            "tf32": fast_fp32_matmuls(ctx.config.device),
            "processes": ctx.ranks.count,
            "dtype": ctx.config.dtype,
            "git": git_info(),
            "packages": package_versions(),
            "started": now(),
        },
        "concepts": [c.name for c in seq.concepts],
        "matrices": {m: [row[:] for row in empty] for m in ctx.metrics},
        "neglect": new_neglect(ctx),
        "tracks": new_tracks(seq, ctx.config.tracks),
        "retention": new_retention(seq),
        "summary": {},
        "tasks": [],
        "error": None,
    }
    result["run_info"]["identity"] = run_identity(result)
    return result


def warn_if_duplicate(run_dir: Path, result: dict[str, Any]) -> list[Path]:
    """Before a run starts: name the runs beside it (same parent folder) that have its identity, and how to
    continue one of them instead; leaderboards count such runs once. Returns their folders."""
    import json
    import sys

    same = []
    for path in sorted(Path(run_dir).parent.glob(f"*/{RESULT_FILE}")):
        try:
            other = json.loads(path.read_text())
            if run_identity(other) == result["run_info"]["identity"]:
                same.append(path.parent)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for other in same:
        print(f"cifc-bench run: warning: {other} is the same run (method, arguments, settings, seed, weights and "
              f"code); leaderboards count it once. Continue it with --resume {other}, or pick another --seed.",
              file=sys.stderr)
    return same


def new_neglect(ctx: RunContext) -> dict[str, Any] | None:
    """The neglect part of a result: multi-concept prompts, thresholds, and T×Q matrices (None: no prompts)."""
    seq = ctx.sequence
    if not seq.multi_concept_prompts:
        return None
    T, Q = len(seq.tasks), len(seq.multi_concept_prompts)
    names = sorted({c for m in seq.multi_concept_prompts for c in m.concepts})
    return {
        "prompts": [{"prompt": m.prompt, "concepts": list(m.concepts),
                     "boxes": [list(b.as_tuple()) for b in m.boxes] if m.boxes else None,
                     "region_prompts": list(m.region_prompts) if m.region_prompts else None}
                    for m in seq.multi_concept_prompts],
        "images_per_prompt": ctx.config.multi_images_per_prompt,
        "calibration": ctx.calibration,
        # R[j][q]: prompt q after task j, from the first task after which all its concepts are learned
        "matrices": {name: [[None] * Q for _ in range(T)] for name in ("cnr", "min_sim", *ctx.presence_fns)},
        # miss rate of each concept after task j, over every multi-concept image that asks for it
        "miss_rate": [dict.fromkeys(names) for _ in range(T)],
    }


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` exclusively, or fail at once naming the process that holds it."""
    import fcntl
    import os

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{run_dir} is being written by {holder}; wait for it to finish (or stop it), then "
                              f"continue with --resume {run_dir}, or pick another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"cifc-bench process {os.getpid()}")
        handle.flush()
        yield


def method_after(ctx: RunContext, j: int) -> Method:
    """A new method on a fresh model, restored to its saved state after task ``j``."""
    method_cls = resolve_run(ctx.config)[2]
    method = build_method(method_cls, fresh_bundle(ctx.config)[0], ctx.config)
    method.load_state_dict(saved_state(ctx.run_dir, j), ctx.sequence.tasks[: j + 1])
    return method


def saved_state(run_dir: Path, j: int) -> dict:
    """The method state saved after task ``j``, or a clear error naming the file (result.json keeps the tasks)."""
    from cifc_bench.core.checkpoint import load_state

    path = state_path(run_dir, j)
    if not path.exists():
        raise ConfigError(f"cannot resume {run_dir}: the method state after task {j + 1}, {path}, is missing. "
                          f"result.json keeps the {j + 1} finished task(s); restore the file, or start a new run with "
                          "--out")
    try:
        return load_state(path)
    except Exception as err:  # safetensors raises its own errors for a torn or foreign file
        raise ConfigError(f"cannot resume {run_dir}: the method state after task {j + 1}, {path}, is unreadable "
                          f"({type(err).__name__}: {err}). result.json keeps the {j + 1} finished task(s); restore the "
                          "file, or start a new run with --out") from err


def check_state(state, task, steps: int, method_args) -> None:
    """A method state with non-finite numbers after a task means training diverged: fail the run there."""
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DivergenceError(f"task {task.index + 1} ({task.name}) diverged: after its {steps} training steps "
                              f"{len(bad)} of the method's {len(state)} state tensors hold NaN or inf (first: "
                              f"{bad[0]}). The learning rates (method arguments {method_args or 'at their defaults'}) "
                              "are the likely cause: lower them with --method-args")
