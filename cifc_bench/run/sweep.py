"""Sweeps: a grid of runs (methods × seeds × method arguments) that can be killed and run again.

Every job has a fixed run directory, ``<out>/<protocol>/<method>/<args>s<seed>``, so running the same sweep
again finds its own work: a completed run is skipped, a partial one continues with ``--resume`` (the harness
keeps every finished task), a failed (diverged) one is reported and left alone, and a missing one starts.
Each job is one ``cifc-bench run`` command line, so a job run by a launcher is exactly the run a person would
type. The presence thresholds of the neglect rate are calibrated once, before any job starts, into the shared
cache that every job then reads.

Launchers: ``local`` runs N jobs at a time on this machine (threads split between them, GPUs given out
round-robin); ``slurm`` submits a job array through submitit, each job requeued with ``--resume`` when it is
preempted or times out; ``submitit-local`` is the same array on this machine (submitit's local executor), to
check a SLURM sweep before spending cluster time.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHERS = ("local", "slurm", "submitit-local")


class SweepError(ValueError):
    """A sweep that cannot be set up; the message names the bad value and the fix."""


@dataclass(frozen=True)
class SweepJob:
    """One run of a sweep: its method, seed and arguments, its directory, and the settings shared by all."""

    method: str
    seed: int
    method_args: Mapping[str, Any]
    run_dir: Path
    settings: Mapping[str, Any] = field(default_factory=dict)  # run settings as flag names (x_y), no method/seed

    def status(self) -> str:
        """``completed``, ``failed``, ``partial`` (started, can resume) or ``missing``."""
        result = self.run_dir / "result.json"
        if not result.is_file():
            return "partial" if (self.run_dir / "state").is_dir() else "missing"
        try:
            status = json.loads(result.read_text()).get("status")
        except (OSError, ValueError):
            return "partial"  # the harness names a torn file on --resume
        return status if status in ("completed", "failed") else "partial"

    def argv(self) -> list[str]:
        """The ``cifc-bench`` command line of this job: a fresh run, or ``--resume`` of a started one."""
        if self.status() == "partial" and (self.run_dir / "result.json").is_file():
            return ["run", "--resume", str(self.run_dir)]
        argv = ["run", "--method", self.method, "--seed", str(self.seed), "--out", str(self.run_dir)]
        for key, value in self.settings.items():
            if key == "tracks":  # a tuple of names: the flag's own comma form
                value = ",".join(value) or "none"
            argv += [f"--{key.replace('_', '-')}", str(value)]
        if self.method_args:
            argv += ["--method-args", *(f"{k}={_text(v)}" for k, v in self.method_args.items())]
        return argv


def _text(value: Any) -> str:
    import yaml

    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def parse_grid(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, list]]:
    """``KEY=V1,V2`` (every method) or ``METHOD.KEY=V1,V2`` (one method) -> {method: {key: [values]}}."""
    from cifc_bench.core.config import parse_value

    grid: dict[str, dict[str, list]] = {m: {} for m in methods}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise SweepError(f"--grid {item!r}: write KEY=V1,V2 or METHOD.KEY=V1,V2 (e.g. --grid ewc.ewc_lambda=1,10,100)")
        scope, dot, name = key.rpartition(".")
        if dot and scope not in grid:
            raise SweepError(f"--grid {item!r}: {scope!r} is not one of the sweep's --methods {list(methods)}")
        parsed = [parse_value(v) for v in values.split(",")]
        for method in ([scope] if dot else methods):
            grid[method][name] = parsed
    return grid


def expand(methods: Sequence[str], seeds: Sequence[int], grid: Mapping[str, Mapping[str, list]], out: Path,
           protocol: str, fixed_args: Mapping[str, Any] | None = None,
           settings: Mapping[str, Any] | None = None, one_seed: Sequence[str] = (),
           orders: Sequence[str] | None = None) -> list[SweepJob]:
    """Every (method, argument combination, task order, seed), in that order, with its run directory; the
    methods in ``one_seed`` (seed-invariant ones, such as ``base``) for the first seed and order only. ``orders``
    None: the settings' task order alone. A run in another order than the protocol's gets ``order=<order>_`` in
    its folder name, so the protocol order's folders stay where they were."""
    from cifc_bench.core.task_order import PROTOCOL, order_problem

    if not methods:
        raise SweepError("a sweep needs at least one method (--methods finetune cidm ...)")
    if not seeds:
        raise SweepError("a sweep needs at least one seed (--seeds 0 1 2)")
    orders = list(orders or [(settings or {}).get("task_order") or PROTOCOL])
    for order in orders:
        if problem := order_problem(order):
            raise SweepError(f"--orders {problem}")
    jobs = []
    for method in methods:
        axes = dict(grid.get(method, {}))
        keys = sorted(axes)
        for values in itertools.product(*(axes[k] for k in keys)) if keys else [()]:
            swept = dict(zip(keys, values, strict=True))
            slug = "".join(f"{k}={_text(v)}_" for k, v in swept.items()).replace("/", "-")
            for order in orders[:1] if method in one_seed else orders:
                prefix = "" if order == PROTOCOL else f"order={order.replace(':', '-')}_"
                for seed in seeds[:1] if method in one_seed else seeds:
                    run_dir = Path(out) / Path(protocol).stem / method.replace(":", "_") / f"{slug}{prefix}s{seed}"
                    job_settings = {**(settings or {}), **({"task_order": order} if order != PROTOCOL else {})}
                    jobs.append(SweepJob(method=method, seed=int(seed), method_args={**(fixed_args or {}), **swept},
                                         run_dir=run_dir, settings=job_settings))
    return jobs


def calibrate_once(jobs: Sequence[SweepJob]) -> int:
    """Calibrate the neglect thresholds for every distinct setting among ``jobs`` into the shared cache, so
    concurrent jobs read them instead of each computing them. Returns how many settings were calibrated."""
    from cifc_bench.core.config import RunSpec, default_device
    from cifc_bench.core.data import cache_dir
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer
    from cifc_bench.evaluation.neglect import calibrate_thresholds
    from cifc_bench.run.setup import resolve_run

    done: set[tuple] = set()
    for job in jobs:
        if job.status() == "completed":
            continue
        spec_data = {**job.settings, "method": job.method, "seed": job.seed, "method_args": dict(job.method_args)}
        spec_data.setdefault("device", default_device())
        config, spec, _, _ = resolve_run(RunSpec.from_dict(spec_data))
        key = (config.protocol, config.model, config.scorer, config.generation(), config.calibration_images)
        if key in done or not spec.raw.get("multi_concept_prompts"):
            continue  # bound (its data checked) once per setting, not once per job
        sequence = spec.bind(spec.data_root(config.data_dir))
        calibrate_thresholds(load_bundle(config.model, config.device), load_scorer(config.scorer, config.device),
                             sequence, config.generation(), config.calibration_images, config.model,
                             cache_dir() / "cnr-thresholds")
        done.add(key)
    return len(done)




def run_cli(argv: Sequence[str]) -> int:
    """Run one job as its own ``cifc-bench`` process (inside a SLURM or submitit job); raises when the run
    fails, so the array says so."""
    code = subprocess.run([sys.executable, "-m", "cifc_bench.cli", *argv]).returncode
    if code:
        raise RuntimeError(f"cifc-bench {' '.join(argv)} exited with {code}")
    return code


class SubmititJob:
    """A sweep job as submitit runs it: requeued with ``--resume`` when preempted or out of time."""

    def __init__(self, job: SweepJob) -> None:
        self.job = job

    def __call__(self) -> str:
        run_cli(self.job.argv())
        return str(self.job.run_dir)

    def checkpoint(self, *args, **kwargs):  # submitit calls this on preemption and timeout
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititJob(self.job))  # argv() resumes a started run


def launch_local(jobs: Sequence[SweepJob], n_parallel: int, log_dir: Path, echo=print) -> dict[str, int]:
    """Run ``jobs`` as ``cifc-bench run`` processes, ``n_parallel`` at a time, each with ``cpu_count //
    n_parallel`` threads and, on a machine with several GPUs, its own GPU. Returns {run_dir: exit code}."""
    import torch

    threads = max(1, (os.cpu_count() or 1) // n_parallel)
    gpus = torch.cuda.device_count()
    pending, running, codes = list(jobs), [], {}
    log_dir.mkdir(parents=True, exist_ok=True)
    slot = 0
    while pending or running:
        while pending and len(running) < n_parallel:
            job = pending.pop(0)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            slot += 1
            log = log_dir / f"{job.method.replace(':', '_')}-{job.run_dir.name}.log"
            argv = job.argv()
            echo(f"start {job.run_dir} ({'resume' if '--resume' in argv else 'new'}), log {log}")
            handle = open(log, "a")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen([sys.executable, "-m", "cifc_bench.cli", *argv], env=env,
                                    stdout=handle, stderr=subprocess.STDOUT)
            running.append((job, proc, handle))
        finished = [(j, p, h) for j, p, h in running if p.poll() is not None]
        if not finished:
            import time

            time.sleep(0.5)
            continue
        for job, proc, handle in finished:
            handle.close()
            running.remove((job, proc, handle))
            codes[str(job.run_dir)] = proc.returncode
            echo(f"{'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}: {job.run_dir}")
    return codes


def launch_submitit(jobs: Sequence[SweepJob], folder: Path, local: bool, slurm: Mapping[str, Any], echo=print):
    """Submit ``jobs`` as one array (SLURM, or submitit's local executor) and wait for it."""
    try:
        import submitit
    except ImportError as err:
        raise SweepError("the slurm launchers need submitit: pip install submitit") from err
    executor = submitit.LocalExecutor(folder=str(folder)) if local else submitit.AutoExecutor(folder=str(folder))
    params = {k: v for k, v in slurm.items() if v is not None}
    if local:
        executor.update_parameters(timeout_min=params.get("timeout_min", 60 * 24))
    else:
        executor.update_parameters(**params)
    submitted = executor.submit_array([SubmititJob(j) for j in jobs])
    echo(f"submitted {len(submitted)} job(s) as {'a local' if local else 'a SLURM'} array; logs in {folder}")
    codes = {}
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            handle.result()
            codes[str(job.run_dir)] = 0
            echo(f"done: {job.run_dir}")
        except Exception as err:  # submitit re-raises the job's error with its log
            codes[str(job.run_dir)] = 1
            echo(f"FAILED: {job.run_dir}: {str(err).splitlines()[-1] if str(err) else type(err).__name__}")
    return codes
