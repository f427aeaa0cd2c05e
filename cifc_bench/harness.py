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
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench import metrics
from cifc_bench.api import (
    Concept,
    ConceptImages,
    DivergenceError,
    GenerationSettings,
    Method,
    TaskSequence,
)
from cifc_bench.config import ConfigError, RunSpec
from cifc_bench.distributed import SINGLE, Ranks
from cifc_bench.eval_requests import concept_requests, evaluated_after, multi_requests
from cifc_bench.images import list_images, load_rgb, save_atomic
from cifc_bench.loggers import active, make_loggers, report
from cifc_bench.plan import remaining_seconds, work_plan
from cifc_bench.progress import progress
from cifc_bench.results import (
    RESULT_FILE,
    SCHEMA_VERSION,
    git_info,
    now,
    package_versions,
    read_result,
    run_identity,
    write_json_atomic,
)
from cifc_bench.seeding import derive_seed, train_seed
from cifc_bench.tracks import new_tracks, track_dir, track_input_dir, track_requests, track_sample

METRICS = ("ia", "ta")  # per-concept metrics of a protocol that names none under ``defaults.metrics``
DINO_METRIC = "ia_dino"  # added when the run has a DINO model (``--dino``)


@dataclass
class RunContext:
    """What one run has loaded: the bound protocol, the method, the scorer and the run directory."""

    config: RunSpec
    sequence: TaskSequence
    method: Method | None  # None when rescoring a run's saved images
    scorer: Any
    run_dir: Path
    metrics: tuple[str, ...] = METRICS
    dino: Any = None  # the DINO encoder behind ia_dino, when the run asks for it
    calibration: dict[str, Any] | None = None  # presence thresholds of the neglect rate (None: no multi prompts)
    model_fingerprint: str = ""  # of the base model's weights, taken before the method could change them
    metric_fns: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> (ConceptImages) -> float
    #: exact neglect checks: name -> (image, Concept, Box | None) -> bool; each gives a neglect matrix of its name
    presence_fns: dict[str, Any] = dataclasses.field(default_factory=dict)
    budgets: tuple[dict[str, Any], ...] = ()  # per task: the schedule's steps and lr_scale
    ranks: Ranks = SINGLE  # this process's place in a run launched on many processes

    @property
    def settings(self) -> GenerationSettings:
        return self.config.generation()

    def precision(self):
        """The autocast context of the run's ``dtype``, entered around every ``learn_task`` and ``generate``."""
        from cifc_bench.precision import autocast

        return autocast(self.config.device, self.config.dtype)


def state_path(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / "state" / f"after_task_{task_index:02d}.safetensors"


def image_dir(run_dir: Path, task_index: int, concept: str) -> Path:
    return Path(run_dir) / "images" / f"after_task_{task_index:02d}" / concept


def multi_dir(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / "images" / f"after_task_{task_index:02d}" / MULTI


MULTI = "_multi"  # folder of multi-concept images beside the concepts' folders (no concept name starts with _)


def resolve_run(config: RunSpec):
    """(resolved config, protocol spec, method class, per-task budgets) of ``config``: everything a run is
    before any data or model is touched (a typo in the method or schedule fails here, at once)."""
    from cifc_bench.protocol import load_protocol, protocol_or_default
    from cifc_bench.registry import load_method

    method_cls = load_method(config.method)
    config = dataclasses.replace(config, protocol=protocol_or_default(config.protocol))
    spec = load_protocol(config.protocol)
    config = config.resolved(dict(spec.defaults), registered_names(method_cls))
    if config.tracks is None:
        config = dataclasses.replace(config, tracks=spec.track_names)
    unknown = [t for t in config.tracks if t not in spec.track_names]
    if unknown:
        raise ConfigError(f"--tracks {','.join(config.tracks)}: protocol {spec.name!r} has no track {unknown[0]!r}; it "
                          f"defines {list(spec.track_names) or 'none'} (--tracks none evaluates no track)")
    budgets = tuple(spec.task_budgets(config.schedule, config.steps))
    return config, spec, method_cls, budgets


def load_context(config: RunSpec, run_dir: Path, calibration: dict[str, Any] | None = None,
                 with_method: bool = True, ranks: Ranks = SINGLE) -> RunContext:
    """Bind the protocol to its data and load model, scorer and method for ``config``.

    The neglect rate's presence thresholds are calibrated here (or taken from ``calibration``, a resumed run's
    own), on the base model before the method can touch it. Without ``with_method`` (rescoring saved images)
    no method is built and nothing can be generated. Under a launcher (``ranks``), each process takes its own
    device and the calibration images are dealt out among the processes.
    """
    from cifc_bench.precision import autocast
    from cifc_bench.scoring import load_scorer

    config, spec, method_cls, budgets = resolve_run(config)
    config = dataclasses.replace(config, device=ranks.device(config.device))
    sequence = spec.bind(spec.data_root(config.data_dir))
    if config.prompts_per_concept > min(len(c.eval_prompts) for c in sequence.concepts):
        raise ConfigError(
            f"--prompts-per-concept {config.prompts_per_concept} exceeds the smallest prompt set of "
            f"{spec.name!r} ({min(len(c.eval_prompts) for c in sequence.concepts)} prompts)"
        )
    bundle, fingerprint = fresh_bundle(config)
    scorer = load_scorer(config.scorer, config.device)
    dino = None
    if config.dino and config.dino != "none":
        from cifc_bench.dino import load_dino

        dino = load_dino(config.dino, config.device)
    if calibration is None and sequence.multi_concept_prompts:
        from cifc_bench.models import cache_dir
        from cifc_bench.neglect import calibrate_thresholds

        with autocast(config.device, config.dtype):
            calibration = calibrate_thresholds(bundle, scorer, sequence, config.generation(),
                                               config.calibration_images, config.model, cache_dir() / "cnr-thresholds",
                                               ranks=ranks)
    method = build_method(method_cls, bundle, config) if with_method else None
    metrics = tuple(spec.defaults.get("metrics", METRICS))
    if dino is not None:
        metrics = (*metrics, DINO_METRIC)
    track_metrics = [m for t in sequence.tracks if t.name in config.tracks for m in t.metrics]
    metric_fns = load_metrics(dict.fromkeys([*metrics, *track_metrics]), spec.path)
    presence_fns = load_metrics(spec.defaults.get("presence", ()), spec.path, key="presence")
    return RunContext(config=config, sequence=sequence, method=method, scorer=scorer, run_dir=Path(run_dir),
                      metrics=metrics, dino=dino, calibration=calibration, model_fingerprint=fingerprint,
                      budgets=budgets, metric_fns=metric_fns, presence_fns=presence_fns, ranks=ranks)


def fresh_bundle(config: RunSpec):
    """The base model as published, at the run's precision, and the fingerprint of its published weights."""
    from cifc_bench.models import load_bundle
    from cifc_bench.precision import cast_frozen

    fast_fp32_matmuls(config.device)
    bundle = load_bundle(config.model, config.device)
    fingerprint = model_fingerprint(bundle)  # of the weights as published, whatever precision the run uses
    cast_frozen(bundle, config.dtype)
    return bundle, fingerprint


def build_method(method_cls, bundle, config: RunSpec):
    """A new method on ``bundle`` with the run's arguments; its adapters are initialised from the run seed."""
    import torch

    accepted = method_arguments(method_cls)
    unknown = sorted(set(config.method_args) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"method {config.method!r} has no argument(s) {unknown}; it accepts: "
                          f"{', '.join(accepted) or 'none'} (--method-args KEY=VALUE)")
    torch.manual_seed(derive_seed("method-init", config.seed))  # adapters initialised at construction
    try:
        return method_cls(bundle, **config.method_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method {config.method!r} rejected its arguments {config.method_args}: {err}") from err


def fast_fp32_matmuls(device: str | None) -> bool:
    """On CUDA, fp32 matrix products and convolutions run on TF32 tensor cores (10 mantissa bits in the
    products, fp32 accumulation), as diffusers' own training scripts allow; a CPU run is left as it is.
    Returns whether TF32 is on (recorded in ``run_info.tf32``)."""
    import torch

    if not str(device or "").startswith("cuda"):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def load_metrics(names, source, key: str = "metrics") -> dict[str, Any]:
    """The metric functions (or, ``key="presence"``, the presence checks) named by a protocol's
    ``defaults.<key>`` (entry-point groups ``cifc_bench.metrics`` / ``cifc_bench.presence``, or
    ``package.module:function``); an unknown name is the protocol's error and lists the registered ones."""
    from cifc_bench.registry import METRICS, PRESENCE, PluginError, list_plugins, load_component

    group, kind = (PRESENCE, "presence check") if key == "presence" else (METRICS, "metric")
    fns = {}
    for name in names:
        try:
            fns[name] = load_component(group, name, kind)
        except PluginError as err:
            raise ConfigError(f"{source}: defaults.{key} names {kind} {name!r}, which does not load: {err} "
                              f"(registered: {list(list_plugins(group))})") from err
    return fns


def method_arguments(method_cls) -> list[str] | None:
    """The keyword arguments a method's constructor takes (None when it takes ``**kwargs``: anything goes)."""
    import inspect

    params = list(inspect.signature(method_cls.__init__).parameters.values())[2:]  # self, bundle
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def registered_names(method_cls) -> tuple[str, ...]:
    """The names under which ``method_cls`` is registered (protocol arguments follow the class, not the name)."""
    from cifc_bench.registry import METHODS, list_plugins

    path = f"{method_cls.__module__}:{method_cls.__qualname__}"
    return tuple(n for n, ep in list_plugins(METHODS).items() if ep.value == path)


def scorer_fingerprint(scorer) -> str:
    """A digest of the scorer's weights: scores made with different weights under one name must not be mixed."""
    from cifc_bench.neglect import weights_fingerprint

    return weights_fingerprint(scorer.model)


def model_fingerprint(bundle) -> str:
    """A digest of the base model's weights: runs on different weights under one model name are not comparable."""
    from cifc_bench.neglect import weights_fingerprint

    return weights_fingerprint(*(m for m in (bundle.unet, bundle.text_encoder, bundle.vae) if m is not None))


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


def run_benchmark(config: RunSpec | None, run_dir: Path, resume: bool = False,
                  given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``, continue) a benchmark in ``run_dir`` and return the final result.

    On resume the run's own stored config is used; ``given`` holds settings the user typed again, which must
    agree with it (only ``device`` may change). One process at a time writes a run directory (a lock that the
    system releases when the process dies, however it dies). Under torchrun or ``accelerate launch`` the
    processes share the run (:mod:`cifc_bench.distributed`): rank 0 holds the lock and writes the result.
    """
    from cifc_bench.distributed import join

    run_dir = Path(run_dir)
    ranks = join()
    with run_lock(run_dir) if ranks.main else contextlib.nullcontext():
        return _run_locked(config, run_dir, resume, given, ranks)


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
        result["status"], result["error"] = "running", None
        if added:
            result["tracks"] = {**(result.get("tracks") or {}), **new_tracks(ctx.sequence, added)}
            result["run_info"]["config"]["tracks"] = list(ctx.config.tracks)
            result["run_info"].setdefault("tracks_added", []).append({"tracks": list(added), "at": now(),
                                                                      "git": git_info()})
    else:
        added = ()
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
            _add_tracks(ctx, result, added)
        _loop(ctx, result)
    except BaseException as err:
        result["status"] = "failed"
        result["error"] = f"{type(err).__name__}: {err}"
        write_json_atomic(run_dir / RESULT_FILE, result)
        raise
    result["status"] = "completed"
    result["run_info"]["finished"] = now()
    write_json_atomic(run_dir / RESULT_FILE, result)
    ranks.barrier()
    return result


def _add_tracks(ctx: RunContext, result: dict[str, Any], names: tuple[str, ...]) -> None:
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
        ctx.method.load_state_dict(_resume_state(ctx.run_dir, done - 1), tasks[:done])
    references: dict[str, np.ndarray] = {}
    device = torch.device(ctx.config.device or "cpu")
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    worker = EvalWorker(ctx) if cfg.eval_workers and ranks.count == 1 and done < len(tasks) else None
    threads = torch.get_num_threads()
    if worker is not None and device.type == "cpu":  # the worker's one thread takes a core of this process's
        torch.set_num_threads(max(1, threads - 1))
    pending: list[tuple[int, dict[str, Any], Any]] = []  # (task, its row so far, the worker's job)
    plan = work_plan(cfg, ctx.sequence, ctx.budgets)
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
        rates = measured_rates(plan, result["tasks"])
        evaluated = len(result["tasks"])
        if rates is not None and evaluated < len(tasks):
            # with a worker, this runs once the next task is trained too, and its state is being evaluated
            trained = evaluated + 1 if worker is not None else evaluated
            bar.set_eta(remaining_seconds(plan, trained, *rates, overlapped=worker is not None))

    loggers = make_loggers(cfg.log_to or (), ctx.run_dir) if ranks.main else []
    try:
        with active(loggers):
            _tasks(ctx, result, bar, done, pending, finish, worker, device, on_cuda)
    finally:
        for logger in loggers:
            logger.close()
        if worker is not None:
            worker.close()
            torch.set_num_threads(threads)


def _tasks(ctx: RunContext, result: dict[str, Any], bar, done: int, pending: list, finish, worker, device,
           on_cuda: bool) -> None:
    """Train and evaluate every task not done yet (the body of :func:`_loop`)."""
    import torch

    from cifc_bench.checkpoint import load_state, save_state

    tasks, cfg, ranks = ctx.sequence.tasks, ctx.config, ctx.ranks
    for j in bar:
        task = tasks[j]
        if on_cuda:  # the run's own device: under --device cuda:1 the current device is another one
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        checkpoint = state_path(ctx.run_dir, j)
        trained_before = checkpoint.exists()  # before a kill, not yet evaluated
        ranks.barrier()  # every rank has looked before rank 0 may write it
        train_seconds = None
        if not trained_before and ranks.main:
            seed = train_seed(cfg.seed, j)
            torch.manual_seed(seed)
            with ctx.precision():
                ctx.method.learn_task(task, cfg.budget(ctx.budgets[j], seed))
            train_seconds = time.perf_counter() - started
            state = ctx.method.state_dict()
            check_state(state, task, ctx.budgets[j]["steps"], cfg.method_args)  # never saved, so never resumed
            save_state(checkpoint, state)
        if not trained_before:
            ranks.barrier()  # the other ranks wait for rank 0's state
        if trained_before or not ranks.main:
            ctx.method.load_state_dict(load_state(checkpoint), tasks[: j + 1])
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
        job = worker.submit(j) if worker is not None and evaluate else None
        while pending:  # the state before this one: its images were made while this task trained
            finish(*pending.pop(0))
        pending.append((j, row, job))
        if worker is None:
            finish(*pending.pop(0))
    while pending:
        finish(*pending.pop(0))


def measured_rates(plan, rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(seconds per training step, seconds per evaluation image) of the tasks this process trained and
    evaluated; None before there are any."""
    trained = [r for r in rows if r.get("train_seconds") is not None]
    steps = sum(r["steps"] for r in trained)
    images = sum(plan.concept_images[r["index"]] + plan.multi_images[r["index"]] +
                 (plan.track_images[r["index"]] if plan.track_images else 0) for r in trained)
    if not trained or not steps:
        return None
    return (sum(r["train_seconds"] for r in trained) / steps,
            sum(r["eval_seconds"] for r in trained) / images if images else 0.0)


class EvalWorker:
    """A second process, one thread, that generates the evaluation images of a saved model state: the method
    is rebuilt on a fresh model and restored from ``state/after_task_NN``, as ``--resume`` restores one, and the
    images are written where the run's own evaluation reads them (:func:`generate_share`)."""

    def __init__(self, ctx: RunContext) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                                        initargs=(ctx.config, ctx.run_dir, ctx.calibration))

    def submit(self, j: int):
        return self.pool.submit(_worker_generate, j)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}


def _worker_start(config: RunSpec, run_dir: Path, calibration) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["ctx"] = load_context(config, run_dir, calibration=calibration, with_method=False)


def _worker_generate(j: int) -> float:
    started = time.perf_counter()
    ctx = _WORKER["ctx"]
    generate_share(dataclasses.replace(ctx, method=method_after(ctx, j)), j)
    return time.perf_counter() - started


def method_after(ctx: RunContext, j: int) -> Method:
    """A new method on a fresh model, restored to its saved state after task ``j``."""
    method_cls = resolve_run(ctx.config)[2]
    method = build_method(method_cls, fresh_bundle(ctx.config)[0], ctx.config)
    method.load_state_dict(_resume_state(ctx.run_dir, j), ctx.sequence.tasks[: j + 1])
    return method


def _resume_state(run_dir: Path, j: int) -> dict:
    """The method state saved after task ``j``, or a clear error naming the file (result.json keeps the tasks)."""
    from cifc_bench.checkpoint import load_state

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


def check_images(images, concept: Concept, j: int) -> None:
    """Every image of a concept one flat colour (black, when the weights are NaN) means sampling broke."""
    flat = [np.ptp(np.asarray(im)) == 0 for im in images]
    if images and all(flat):
        raise DivergenceError(f"after task {j + 1}, every one of the {len(images)} images of concept {concept.name!r} "
                              "is a single flat colour: the model no longer samples (non-finite weights or a "
                              "collapsed model). Lower the learning rates, or check the method's generate()")


def evaluate_task(ctx: RunContext, result: dict[str, Any], j: int, references: dict[str, np.ndarray]) -> None:
    """Fill row j of every matrix (and of the neglect matrices): all concepts learned so far, scored."""
    last = len(ctx.sequence.tasks) - 1
    for concept in ctx.sequence.concepts[: j + 1]:
        i = ctx.sequence.concepts.index(concept)
        images: dict[str, list] | None = {} if i == j or j == last else None  # the cells learning, final read
        scores = evaluate_concept(ctx, j, concept, references, images)
        for m, v in scores.items():
            result["matrices"][m][j][i] = v
        for m, values in (images or {}).items():
            result.setdefault("per_image", {}).setdefault(m, {})[f"{j},{i}"] = values
    if result.get("neglect"):
        evaluate_neglect(ctx, j, result["neglect"], references)
    if result.get("tracks"):
        evaluate_tracks(ctx, j, result["tracks"], references)


def evaluation_images(ctx: RunContext, j: int) -> list[tuple[list, Path]]:
    """Every (pairs, folder) the evaluation after task ``j`` generates: each learned concept's requests, then
    each multi-concept prompt whose concepts are all learned, as :func:`evaluate_task` asks for them."""
    seq, cfg = ctx.sequence, ctx.config
    out = [(concept_requests(seq.name, c, cfg.prompts_per_concept, cfg.images_per_prompt), image_dir(ctx.run_dir, j, c.name))
           for c in seq.concepts[: j + 1]]
    learned = {c.name for c in seq.concepts[: j + 1]}
    out += [(multi_requests(seq, q, cfg.multi_images_per_prompt), multi_dir(ctx.run_dir, j))
            for q, m in enumerate(seq.multi_concept_prompts) if set(m.concepts) <= learned]
    out += [([(r, name) for r, name, _ in _track_pairs(ctx, track, c)], track_dir(ctx.run_dir, j, track.name, c.name))
            for track in _selected_tracks(ctx) for c in track.targets(seq.concepts[: j + 1])]
    return out


def _selected_tracks(ctx: RunContext):
    return [t for t in ctx.sequence.tracks if t.name in (ctx.config.tracks or ())]


def _track_pairs(ctx: RunContext, track, concept):
    words = {c.name: c.class_word for c in ctx.sequence.concepts}
    return track_requests(ctx.sequence.name, track, concept, words, ctx.config.resolution)


def missing_batches(pairs, folder: Path, batch_size: int) -> list[list]:
    """The requests of ``pairs`` whose files are missing, in generation batches (the same in every process)."""
    missing = [(r, name) for r, name in pairs if not (folder / name).exists()]
    return [missing[start : start + batch_size] for start in range(0, len(missing), batch_size)]


def generate_share(ctx: RunContext, j: int) -> None:
    """This rank's share of the evaluation after task ``j``: the missing images' batches, dealt round-robin
    over the ranks, sampled and written. Batches are those one process would make, so every image is too."""
    batches = [(folder, batch) for pairs, folder in evaluation_images(ctx, j)
               for batch in missing_batches(pairs, folder, ctx.settings.batch_size)]
    mine = ctx.ranks.share(batches)
    for folder in {f for f, _ in mine}:
        _write_batches(ctx, [b for f, b in mine if f == folder], folder, f"generate share {ctx.ranks.index}@{j}")


def generate_cached(ctx: RunContext, pairs, folder: Path, desc: str) -> list:
    """The images of ``pairs`` (request, file name): generated for the files missing in ``folder``, then read."""
    batches = missing_batches(pairs, folder, ctx.settings.batch_size)
    if batches and ctx.method is None:
        raise ConfigError(f"{folder} lacks {sum(map(len, batches))} of the run's images (first: {batches[0][0][1]}); "
                          "rescoring reads the images a run saved and generates none. Re-run the method instead.")
    generated = _write_batches(ctx, batches, folder, desc)
    return [generated[name] if name in generated else load_rgb(folder / name) for _, name in pairs]


def _write_batches(ctx: RunContext, batches: list[list], folder: Path, desc: str) -> dict[str, Any]:
    """Generate each batch of (request, file name) and write its PNGs; returns file name -> image."""
    from concurrent.futures import ThreadPoolExecutor

    generated: dict[str, Any] = {}
    # one writer thread: PNG encoding (zlib releases the GIL) overlaps the sampling of the next batch
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-writer") as writer:
        writes = []
        for chunk in progress(batches, desc=desc, leave=False):
            with ctx.precision():
                images = ctx.method.generate([r for r, _ in chunk], ctx.settings)
            if len(images) != len(chunk):
                raise RuntimeError(f"method {ctx.config.method!r} returned {len(images)} images for {len(chunk)} "
                                   "requests")
            for (_, name), image in zip(chunk, images, strict=True):
                generated[name] = image.convert("RGB")  # what the PNG decodes to (lossless): no re-reading
                writes.append(writer.submit(save_atomic, generated[name], folder / name))
        for write in writes:
            write.result()  # a failed write (a full disk) surfaces here, before any score is computed
    return generated


def evaluate_concept(ctx: RunContext, j: int, concept: Concept, references: dict[str, np.ndarray],
                     per_image: dict[str, list] | None = None) -> dict[str, float]:
    """Generate (or reuse) concept images for model state j and score them with every metric; with a
    ``per_image`` dict, also each image's own score per metric (the leaderboard's interval units)."""
    cfg = ctx.config
    folder = image_dir(ctx.run_dir, j, concept.name)
    pairs = concept_requests(ctx.sequence.name, concept, cfg.prompts_per_concept, cfg.images_per_prompt)
    generated = generate_cached(ctx, pairs, folder, f"generate {concept.name}@{j}")
    check_images(generated, concept, j)
    _references(ctx, concept, references)
    class_prompts = [concept.to_class_words(r.prompt) for r, _ in pairs]
    dino = {}
    if ctx.dino is not None:
        key = f"{DINO_METRIC}:{concept.name}"
        if key not in references:
            references[key] = ctx.dino.encode_images([load_rgb(p) for p in list_images(concept.image_dir)])
        dino = {"dino_features": ctx.dino.encode_images(generated), "dino_reference_features": references[key]}
    sample = ConceptImages(concept=concept, images=tuple(generated), prompts=tuple(class_prompts),
                           features=ctx.scorer.encode_images(generated), reference_features=references[concept.name],
                           text_features=ctx.scorer.encode_texts(class_prompts), **dino)
    scores = {name: float(ctx.metric_fns[name](sample)) for name in ctx.metrics}
    if per_image is not None:
        per_image.update(image_scores(ctx, sample))
    return {k: (None if math.isnan(v) else v) for k, v in scores.items()}


def image_scores(ctx: RunContext, sample: ConceptImages, names=None) -> dict[str, list[float | None]]:
    """Every metric (of ``names``, default the run's) of each image alone (None where a metric cannot score
    it, e.g. ``identity_acc`` on a known-style prompt). Their mean is the metric of a metric that averages over
    images (ia, ta, identity_acc); ``context_acc`` pools attributes over images, so its mean of images can
    differ slightly."""
    out = {}
    for name in ctx.metrics if names is None else names:
        values = [float(ctx.metric_fns[name](sample.image(k))) for k in range(len(sample.images))]
        out[name] = [None if math.isnan(v) else v for v in values]
    return out


def evaluate_neglect(ctx: RunContext, j: int, neglect: dict[str, Any], references: dict[str, np.ndarray]) -> None:
    """Generate (or reuse) the images of every multi-concept prompt whose concepts are all learned by task j,
    score the presence of each concept (box crop against its threshold), and fill row j of the neglect
    matrices. Per-image scores go to ``scores.json`` beside the images, for reports."""
    from cifc_bench import neglect as ng
    from cifc_bench.results import write_json_atomic

    seq, cfg = ctx.sequence, ctx.config
    learned = {c.name for c in seq.concepts[: j + 1]}
    thresholds = neglect["calibration"]["thresholds"]
    folder = multi_dir(ctx.run_dir, j)
    per_image, hits = [], {name: [] for name in neglect["miss_rate"][j]}
    for q, m in enumerate(seq.multi_concept_prompts):
        if not set(m.concepts) <= learned:
            continue
        pairs = multi_requests(seq, q, cfg.multi_images_per_prompt)
        images = generate_cached(ctx, pairs, folder, f"generate multi q{q}@{j}")
        concepts = [seq.concept(c) for c in m.concepts]
        protos = [_prototype(ctx, c, references) for c in concepts]
        sims = ng.neglect_similarities(ctx.scorer, images, m.boxes, [c.kind for c in concepts], protos)
        scores = ng.score_presence(sims, ng.prompt_thresholds(neglect["calibration"], q, m.concepts))
        neglect["matrices"]["cnr"][j][q] = scores.cnr
        neglect["matrices"]["min_sim"][j][q] = scores.min_sim
        final = j == len(seq.tasks) - 1  # each final image neglected or not: the leaderboard's interval units
        if final:
            neglect.setdefault("per_image", {}).setdefault("cnr", {})[str(q)] = [bool(v) for v in scores.neglected]
        for k, c in enumerate(m.concepts):
            hits[c].extend(scores.present[:, k].tolist())
        exact = {}
        for check, fn in ctx.presence_fns.items():  # exact checks: neglected when any concept is not present
            exact[check] = [[bool(fn(im, c, m.boxes[k] if m.boxes else None)) for k, c in enumerate(concepts)]
                            for im in images]
            rows = neglect["matrices"].setdefault(check, [[None] * len(seq.multi_concept_prompts) for _ in seq.tasks])
            rows[j][q] = float(np.mean([not all(row) for row in exact[check]]))
            if final:
                neglect.setdefault("per_image", {}).setdefault(check, {})[str(q)] = [not all(r) for r in exact[check]]
        per_image += [{"prompt": q, "file": name, "concepts": list(m.concepts),
                       "similarity": scores.similarity[n].tolist(), "present": scores.present[n].tolist(),
                       **{f"present_{check}": rows[n] for check, rows in exact.items()}}
                      for n, (_, name) in enumerate(pairs)]
    neglect["miss_rate"][j] = {c: (1.0 - float(np.mean(v)) if v else None) for c, v in hits.items()}
    if per_image:
        write_json_atomic(folder / "scores.json", {"thresholds": thresholds, "images": per_image})


def evaluate_tracks(ctx: RunContext, j: int, tracks: dict[str, Any], references: dict[str, np.ndarray]) -> None:
    """Generate (or reuse) every learned target concept's outputs of every track, score them with the track's
    metrics, and fill row j of the track matrices."""
    seq = ctx.sequence
    for name, part in tracks.items():
        track = seq.track(name)
        for concept in track.targets(seq.concepts[: j + 1]):
            triples = _track_pairs(ctx, track, concept)
            if not triples:
                continue
            pairs = [(r, file) for r, file, _ in triples]
            outputs = generate_cached(ctx, pairs, track_dir(ctx.run_dir, j, name, concept.name),
                                      f"generate {name} {concept.name}@{j}")
            inputs = track_input_dir(ctx.run_dir, name, concept.name)
            for (_, file, image) in triples:  # beside the outputs, for reports and readers of the run
                if not (inputs / file).exists():
                    save_atomic(image, inputs / file)
            sample = track_sample(track, concept, outputs, [im for _, _, im in triples], [r.prompt for r, _ in pairs],
                                  ctx.scorer, _references(ctx, concept, references))
            i = seq.concepts.index(concept)
            for metric in track.metrics:
                value = float(ctx.metric_fns[metric](sample))
                part["matrices"][metric][j][i] = None if math.isnan(value) else value
            if i == j or j == len(seq.tasks) - 1:  # the cells learning and final read: their interval units
                for metric, values in image_scores(ctx, sample, track.metrics).items():
                    part.setdefault("per_image", {}).setdefault(metric, {})[f"{j},{i}"] = values


def _references(ctx: RunContext, concept: Concept, references: dict[str, np.ndarray]) -> np.ndarray:
    """The scorer features of the concept's training images (encoded once per run)."""
    if concept.name not in references:
        references[concept.name] = ctx.scorer.encode_images([load_rgb(p) for p in list_images(concept.image_dir)])
    return references[concept.name]


def _prototype(ctx: RunContext, concept: Concept, references: dict[str, np.ndarray]) -> np.ndarray:
    """The concept's presence prototype under the run's scorer (computed once per run)."""
    from cifc_bench.neglect import prototype

    return prototype(_references(ctx, concept, references))  # the same reference features as IA
