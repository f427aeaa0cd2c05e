"""The continual loop: learn task j, then evaluate every concept seen so far, and record R[j][i].

The harness owns everything but learning and generating: data, seeds, the step budget, the image cache,
scoring, checkpoints and the result file. A killed run resumes from its last finished task and ends with
exactly the numbers of an uninterrupted run::

    result = run_benchmark(RunSpec(method="finetune", protocol="cifc10", steps=2), Path("runs/x"))
    result = run_benchmark(None, Path("runs/x"), resume=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench.core.config import ConfigError, RunSpec
from cifc_bench.core.distributed import SINGLE, Ranks
from cifc_bench.core.loggers import active, make_loggers, report
from cifc_bench.core.progress import progress
from cifc_bench.core.results import (
    RESULT_FILE,
    git_info,
    now,
    read_result,
    write_json_atomic,
    write_text_atomic,
)
from cifc_bench.core.seeding import train_seed
from cifc_bench.diffusion.models import compile_seconds
from cifc_bench.evaluation import metrics
from cifc_bench.evaluation.context import RunContext
from cifc_bench.evaluation.eval_requests import evaluated_after
from cifc_bench.evaluation.evaluate import evaluate_task, evaluate_tracks
from cifc_bench.evaluation.image_cache import generate_share
from cifc_bench.evaluation.retention import evaluate_retention, new_retention
from cifc_bench.evaluation.tracks import new_tracks
from cifc_bench.run.eval_worker import EvalWorker
from cifc_bench.run.plan import prior_image_seconds, remaining_seconds, work_plan
from cifc_bench.run.rundir import (
    check_state,
    method_after,
    new_result,
    recorded_train_seconds,
    run_lock,
    saved_state,
    state_path,
    training_time_path,
    warn_if_duplicate,
)
from cifc_bench.run.setup import load_context


def run_benchmark(config: RunSpec | None, run_dir: Path, resume: bool = False,
                  given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a benchmark in ``run_dir`` and return the final result.

    On resume the run's own stored config is used; ``given`` holds settings the user typed again, which must
    agree with it (only ``device`` may change). One process at a time writes a run directory (a lock that the
    system releases when the process dies, however it dies). Under torchrun or ``accelerate launch`` the
    processes share the run (:mod:`cifc_bench.core.distributed`): rank 0 holds the lock and writes the result.
    """
    from cifc_bench.core.distributed import join

    run_dir = Path(run_dir)
    ranks = join()
    with run_lock(run_dir) if ranks.main else contextlib.nullcontext():
        return _run_locked(config, run_dir, resume, given, ranks)


def _run_locked(config: RunSpec | None, run_dir: Path, resume: bool, given: dict[str, Any] | None,
                ranks: Ranks = SINGLE) -> dict[str, Any]:
    if resume:
        result = read_result(run_dir)
        ranks.barrier()  # every rank has read the result before rank 0 rewrites it
        stored = RunSpec.from_dict(result["run_info"]["config"])
        given = dict(given or {})
        device = given.pop("device", stored.device)
        stored = dataclasses.replace(stored, eval_workers=given.pop("eval_workers", stored.eval_workers))
        wanted = given.pop("tracks", None)
        _check_resume_config(given, stored)
        have = tuple(result.get("tracks") or {})
        added = tuple(t for t in (wanted or ()) if t not in have)
        stored = dataclasses.replace(stored, tracks=(*have, *added))  # tracks only ever join a run
        ctx = load_context(dataclasses.replace(stored, device=device), run_dir,
                           calibration=(result.get("neglect") or {}).get("calibration"), ranks=ranks)
        began_on = result["run_info"].get("model_fingerprint")
        if began_on and began_on != ctx.model_fingerprint:
            raise ConfigError(f"{run_dir} began on other weights of model {stored.model!r} (fingerprint {began_on}, "
                              f"now {ctx.model_fingerprint}); its matrix cannot mix two base models. Start a new run "
                              f"with --out, or restore the weights it began on.")
        finished_before = result["run_info"].get("finished") if result["status"] == "completed" else None
        if len(result["tasks"]) < len(ctx.sequence.tasks):  # the code that trains the rest is part of the run
            result["run_info"].setdefault("resumed", []).append({"from_task": len(result["tasks"]), "at": now(),
                                                                 "git": git_info()})
        result["status"], result["error"] = "running", None
        retention_added = result.get("retention") is None and bool(ctx.sequence.retention_prompts)
        if retention_added:  # the protocol measures retention now: every evaluated state gets it, from its state
            result["retention"] = new_retention(ctx.sequence)
            result["run_info"]["retention_added"] = {"at": now(), "git": git_info()}
        if added:
            result["tracks"] = {**(result.get("tracks") or {}), **new_tracks(ctx.sequence, added)}
            result["run_info"]["config"]["tracks"] = list(ctx.config.tracks)
            result["run_info"].setdefault("tracks_added", []).append({"tracks": list(added), "at": now(),
                                                                      "git": git_info()})
    else:
        added, retention_added, finished_before = (), False, None
        if (run_dir / RESULT_FILE).exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pick a new --out")
        ranks.barrier()  # every rank has checked before rank 0 writes
        ctx = load_context(config, run_dir, ranks=ranks)
        result = new_result(ctx)
        if ranks.main:
            warn_if_duplicate(run_dir, result)
    if not ranks.main:  # the other ranks help generate; rank 0 alone writes, and its result is the run's
        _loop(ctx, result)
        ranks.barrier()  # rank 0 has written the final result
        return read_result(run_dir)
    write_json_atomic(run_dir / RESULT_FILE, result)
    try:
        if added:
            add_tracks(ctx, result, added)
        if retention_added:
            add_retention(ctx, result)
        _loop(ctx, result)
    except BaseException as err:
        result["status"] = "failed"
        result["error"] = f"{type(err).__name__}: {err}"
        write_json_atomic(run_dir / RESULT_FILE, result)
        raise
    result["status"] = "completed"
    # a completed run resumed to add tracks or retention keeps the time its tasks finished: its wall time is the
    # leaderboard's cost, and the additions record their own times (tracks_added, retention_added)
    result["run_info"]["finished"] = finished_before or now()
    write_json_atomic(run_dir / RESULT_FILE, result)
    ranks.barrier()
    return result


def add_tracks(ctx: RunContext, result: dict[str, Any], names: tuple[str, ...]) -> None:
    """Evaluate ``names``, tracks a resumed run did not have, in every model state it already evaluated: each
    state's method is restored from its saved state on a fresh model, as ``--resume`` restores one, so the
    outputs equal those the run would have made with the tracks from the start. Rows already filled (a
    kill during this) are kept."""
    cfg, n_tasks = ctx.config, len(ctx.sequence.tasks)
    references: dict[str, np.ndarray] = {}
    part = {name: result["tracks"][name] for name in names}
    for j in progress(range(len(result["tasks"])), desc="add tracks"):
        if not evaluated_after(cfg, j, n_tasks):
            continue
        if all(v is not None for t in part.values() for row in t["matrices"].values()
               for i, v in enumerate(row[j]) if ctx.sequence.concepts[i].name in t["concepts"] and i <= j):
            continue
        evaluate_tracks(dataclasses.replace(ctx, method=method_after(ctx, j)), j, part, references)
        result["summary"] = metrics.summarize_result(result)
        write_json_atomic(ctx.run_dir / RESULT_FILE, result)


def add_retention(ctx: RunContext, result: dict[str, Any]) -> None:
    """Measure retention in every state a resumed run evaluated before its protocol had retention prompts, each
    restored from its saved state on a fresh model (as :func:`add_tracks`); a kill keeps the filled rows."""
    cfg, n_tasks, part = ctx.config, len(ctx.sequence.tasks), result["retention"]
    references: dict[str, np.ndarray] = {}
    for j in progress(range(len(result["tasks"])), desc="add retention"):
        if evaluated_after(cfg, j, n_tasks) and part["rows"]["drift"][j] is None:
            evaluate_retention(dataclasses.replace(ctx, method=method_after(ctx, j)), j, part, references)
            write_json_atomic(ctx.run_dir / RESULT_FILE, result)


def _check_resume_config(given: dict[str, Any], stored: RunSpec) -> None:
    """Resuming with different settings would mix two experiments in one matrix: refuse."""
    differing = [f"{k} (run: {getattr(stored, k)!r}, now: {v!r})" for k, v in given.items() if getattr(stored, k) != v]
    if differing:
        raise ConfigError("--resume continues a run with its own settings, but these differ: " + "; ".join(differing)
                          + ". Drop them from the command, or start a new run with --out.")


def _loop(ctx: RunContext, result: dict[str, Any]) -> None:
    """Train task j, then evaluate the state after it and write row j. With ``eval_workers`` 1 (one process
    only), a second process generates the images of state j from its saved state while task j+1 trains; this
    process then scores them (the images are read back byte-identical) and writes the rows in task order."""
    import torch

    tasks, cfg, ranks = ctx.sequence.tasks, ctx.config, ctx.ranks
    done = len(result["tasks"])
    if done:
        ctx.method.load_state_dict(saved_state(ctx.run_dir, done - 1), tasks[:done])
    references: dict[str, np.ndarray] = {}
    device = torch.device(ctx.config.device or "cpu")
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    worker = EvalWorker(ctx) if cfg.eval_workers and ranks.count == 1 and done < len(tasks) else None
    threads = torch.get_num_threads()
    if worker is not None and device.type == "cpu":  # the worker's one thread takes a core of this process's
        torch.set_num_threads(max(1, threads - 1))
    pending: list[tuple[int, dict[str, Any], Any]] = []  # (task, its row so far, the worker's job)
    plan = work_plan(cfg, ctx.sequence, ctx.budgets, method_cls=type(ctx.method))
    bar = progress(range(done, len(tasks)), desc="tasks", initial=done, total=len(tasks))

    def finish(j: int, row: dict[str, Any], job) -> None:
        generated = job.result() if job is not None else 0.0  # the worker's seconds; its error surfaces here
        started = time.perf_counter()
        if evaluated_after(cfg, j, len(tasks)):
            evaluate_task(ctx, result, j, references)
        if job is None:  # evaluated here: the peaks include the evaluation's, as they always did
            row = {**row, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None}
        result["tasks"].append({**row, "eval_seconds": generated + time.perf_counter() - started})
        result["summary"] = metrics.summarize_result(result)
        write_json_atomic(ctx.run_dir / RESULT_FILE, result)
        for metric, values in result["summary"].items():  # each evaluation's summaries, for the loggers
            for key, value in (values or {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    report(f"eval/{metric}/{key}", value, step=j)
        # with a worker, this runs once the next task is trained too, and its state is being evaluated
        update_eta(len(result["tasks"]) + 1 if worker is not None else len(result["tasks"]))

    def update_eta(trained: int) -> None:
        """The bar's ETA from the work left at the rates measured so far; before any evaluation is timed, an
        image's cost comes from the training step's (:func:`prior_image_seconds`)."""
        rows = [*result["tasks"], *(row for _, row, _ in pending)]
        rates = measured_rates(plan, rows, prior=lambda step: prior_image_seconds(cfg, step))
        if rates is not None and trained < len(tasks):
            bar.set_eta(remaining_seconds(plan, trained, *rates, overlapped=worker is not None))

    loggers = make_loggers(cfg.log_to or (), ctx.run_dir) if ranks.main else []
    try:
        with active(loggers):
            _tasks(ctx, result, bar, done, pending, finish, update_eta, worker, device, on_cuda)
    finally:
        for logger in loggers:
            logger.close()
        if worker is not None:
            worker.close()
            torch.set_num_threads(threads)


def _tasks(ctx: RunContext, result: dict[str, Any], bar, done: int, pending: list, finish, update_eta, worker, device,
           on_cuda: bool) -> None:
    """Train and evaluate every task not done yet (the body of :func:`_loop`)."""
    import torch

    from cifc_bench.core.checkpoint import load_state, save_state

    tasks, cfg, ranks = ctx.sequence.tasks, ctx.config, ctx.ranks
    for j in bar:
        task = tasks[j]
        if on_cuda:  # the run's own device: under --device cuda:1 the current device is another one
            torch.cuda.reset_peak_memory_stats(device)
        started, compiling = time.perf_counter(), compile_seconds() if cfg.compile else 0.0
        checkpoint = state_path(ctx.run_dir, j)
        trained_before = checkpoint.exists()  # before a kill, not yet evaluated
        ranks.barrier()  # every rank has looked before rank 0 may write it
        train_seconds = None
        if not trained_before and ranks.main:
            seed = train_seed(cfg.seed, j)
            torch.manual_seed(seed)
            ctx.learn(task, cfg.budget(ctx.budgets[j], seed))
            train_seconds = time.perf_counter() - started
            state = ctx.method.state_dict()
            check_state(state, task, ctx.budgets[j]["steps"], cfg.method_args)  # never saved, so never resumed
            save_state(checkpoint, state)
            # no fault point of its own: the reliability tests' kill counts stay those of results and states
            write_text_atomic(training_time_path(checkpoint), json.dumps({"train_seconds": train_seconds}))
        if not trained_before:
            ranks.barrier()  # the other ranks wait for rank 0's state
        if trained_before or not ranks.main:
            ctx.method.load_state_dict(load_state(checkpoint), tasks[: j + 1])
        if trained_before and ranks.main:  # trained by the process a kill stopped: its time, where it was saved
            train_seconds = recorded_train_seconds(checkpoint)
        evaluate = evaluated_after(cfg, j, len(tasks))
        if evaluate and ranks.count > 1:
            generate_share(ctx, j)  # each rank samples its batches; rank 0 then reads them all
            ranks.barrier()
        if not ranks.main:
            continue
        row = {
            "index": j,
            "task": task.name,
            **ctx.budgets[j],
            "train_seconds": train_seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None,
            "trainable_params": ctx.method.trainable_parameters(),
            "stored_params": ctx.method.stored_parameters(),
        }
        if cfg.compile:  # the compile warm-up inside this task's training time, reported apart from it
            row["compile_seconds"] = compile_seconds() - compiling
        job = worker.submit(j) if worker is not None and evaluate else None
        while pending:  # the state before this one: its images were made while this task trained
            finish(*pending.pop(0))
        pending.append((j, row, job))
        if worker is not None:  # its evaluation is the worker's: the ETA counts this task's training now
            update_eta(j + 1)
        if worker is None:
            finish(*pending.pop(0))
    while pending:
        finish(*pending.pop(0))


def measured_rates(plan, rows: list[dict[str, Any]], prior=None) -> tuple[float, float] | None:
    """(seconds per training step, seconds per evaluation image) of the tasks this process trained (or whose
    training a killed process timed) and evaluated; None before there are any. Rows trained but not yet
    evaluated count for the step; before any evaluation is timed, ``prior(step_seconds)`` gives the image's
    (None without one)."""
    trained = [r for r in rows if r.get("train_seconds") is not None]
    steps = sum(plan.train_steps[r["index"]] for r in trained)  # the method's own steps (replay's exceed the budget)
    if not trained or not steps:
        return None
    step = sum(r["train_seconds"] for r in trained) / steps
    evaluated = [r for r in trained if r.get("eval_seconds") is not None]
    images = sum(plan.images_after(r["index"]) for r in evaluated)
    if evaluated:
        return step, (sum(r["eval_seconds"] for r in evaluated) / images if images else 0.0)
    return (step, prior(step)) if prior is not None else None
