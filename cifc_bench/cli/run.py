"""The commands that run methods: ``run`` (and its ``--dry-run``), ``sweep`` and ``generate``."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from cifc_bench.cli.parser import EXIT_FAILED, CLIError, given_settings, parse_method_args, run_config


def cmd_run(args: argparse.Namespace) -> int:
    from cifc_bench.run.loop import run_benchmark

    given = given_settings(args)
    if args.dry_run:
        if args.resume:
            raise CLIError("--dry-run plans a new run; to see what a resumed run has left, drop --resume")
        return dry_run(run_config(given), args.warmup_steps)
    from cifc_bench.core.distributed import join

    if args.resume:
        ranks = join()
        result = run_benchmark(None, args.resume, resume=True, given=given)
        run_dir = args.resume
    else:
        config = run_config(given)
        ranks = join()  # under torchrun / accelerate launch: one run shared by the processes
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        # your runs go to runs/; the committed reference runs in results/ change only with an explicit --out
        run_dir = ranks.broadcast(args.out or Path("runs") / Path(config.protocol).stem /
                                  config.method.replace(":", "_") / f"{stamp}-s{config.seed}")  # chosen once
        check_writable(run_dir)
        result = run_benchmark(config, run_dir)
    if ranks.main:
        print(f"run {result['status']}: {run_dir}/result.json\n{summary_lines(result['summary'])}")
    return 0


def dry_run(config, warmup_steps: int) -> int:
    """Print the work of ``config`` for its evaluation schedule and the other one, then (``warmup_steps`` > 0)
    time a warm-up on the model and device and print the estimated wall time of both."""
    import tempfile

    from cifc_bench.core.config import EVAL_SCHEDULES
    from cifc_bench.run import plan
    from cifc_bench.run.setup import load_context, resolve_run, run_sequence

    if warmup_steps < 0:
        raise CLIError(f"--warmup-steps {warmup_steps}: give a whole number >= 0 (0: counts only)")
    config, spec, method_cls, budgets = resolve_run(config)
    sequence = run_sequence(spec, config, Path(config.data_dir or "."), check=False)  # counts need the protocol, not its data
    schedules = (config.eval_schedule, *(s for s in EVAL_SCHEDULES if s != config.eval_schedule))
    plans = {s: plan.work_plan(config, sequence, budgets, s, method_cls) for s in schedules}
    print(f"dry run: {config.method} on {spec.name} (schedule {config.schedule}), model {config.model}, "
          f"device {config.device}, {config.dtype}; nothing is written")
    for s, p in plans.items():
        which = "this run" if s == config.eval_schedule else f"with --eval-schedule {s}"
        print(f"eval schedule {s} ({which}):" + "".join(f"\n  {line}" for line in plan.describe(p)))
    bench = plan.latest_bench(device_name(config.device))
    warm = plan.warmup_from_bench(bench[1], config, method_cls) if bench else None
    if warm is not None:
        for s, p in plans.items():
            print(f"  estimated wall time ({s}), from {bench[0]}: "
                  f"{plan.format_duration(plan.estimate_seconds(p, warm))} (this device's cifc-bench bench figures)")
    if warmup_steps == 0:
        return 0
    print(f"warm-up: {warmup_steps + 2} training steps and 3 image batches of task 1 on {config.device} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="cifc-dry-run-") as tmp:  # the run directory is never written
        ctx = load_context(config, Path(tmp), calibration={"thresholds": []}, base_images=False)
        warm = plan.measure_warmup(ctx, warmup_steps)
    multi = f", {warm.multi_image:.3g} s per multi-concept image" if warm.multi_image is not None else ""
    print(f"  measured: {warm.step:.3g} s per training step + {warm.per_task:.3g} s per task, "
          f"{warm.concept_image:.3g} s per concept image{multi}, {warm.base_image:.3g} s per base-model image")
    for s, p in plans.items():
        print(f"  estimated wall time ({s}): {plan.format_duration(plan.estimate_seconds(p, warm))} "
              "(an estimate: work that grows with the number of stored tasks is timed at task 1)")
    return 0


def device_name(device: str) -> str:
    """The name ``cifc-bench bench`` records for ``device`` (a GPU's model; on a CPU, its processor)."""
    import platform

    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).name
    return platform.processor() or platform.machine()


def cmd_generate(args: argparse.Namespace) -> int:
    from cifc_bench.run.generate import generate_from_run

    if not (args.run_dir / "result.json").is_file():
        raise CLIError(f"no result.json in {args.run_dir}; pass a run directory (runs/<protocol>/<method>/<run>)")
    grid, images = generate_from_run(args.run_dir, args.prompt, args.n, args.seed, args.out, args.after_task,
                                     args.box, args.region_prompt, args.device, args.init_image, args.strength,
                                     args.mask_box)
    print(f"generated {len(images)} image(s): {grid.parent} (grid: {grid})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cifc_bench.run import sweep

    if args.jobs < 1:
        raise CLIError(f"--jobs {args.jobs}: give a whole number >= 1")
    given = given_settings(args)
    fixed = given.pop("method_args", {})
    from cifc_bench.core.protocol import protocol_or_default
    from cifc_bench.core.registry import load_method

    given["protocol"] = protocol_or_default(given.get("protocol"))

    classes = {method: load_method(method) for method in args.methods}  # a typo should fail before anything starts
    one_seed = [m for m, cls in classes.items()
                if getattr(cls, "seed_invariant", False) and len(args.seeds) * len(args.orders or [0]) > 1]
    for method in one_seed:
        print(f"sweep: {method!r} cannot depend on the seed (it learns nothing): one run, seed {args.seeds[0]}, "
              f"serves every seed", flush=True)
    grid = sweep.parse_grid(args.grid, args.methods)
    jobs = sweep.expand(args.methods, args.seeds, grid, args.out, given["protocol"], fixed, given, one_seed,
                        args.orders)
    states = {j.run_dir: j.status() for j in jobs}
    todo = [j for j in jobs if states[j.run_dir] in ("missing", "partial")]
    counts = {s: sum(v == s for v in states.values()) for s in ("completed", "failed", "partial", "missing")}
    print(f"sweep: {len(jobs)} run(s) under {args.out}: {counts['completed']} completed (skipped), {counts['failed']} "
          f"failed (left alone: delete the folder to run it again), {counts['partial']} to resume, "
          f"{counts['missing']} to start", flush=True)
    for job in jobs:
        if states[job.run_dir] == "failed":
            print(f"  failed before: {job.run_dir}")
    if not todo:
        return 0
    if sweep.calibrate_once(todo):
        print("sweep: neglect thresholds calibrated once for every run", flush=True)
    if args.launcher == "local":
        codes = sweep.launch_local(todo, args.jobs, args.out / "_sweep_logs", echo=lambda m: print(m, flush=True))
    else:
        slurm = {"timeout_min": args.slurm_time, "slurm_partition": args.slurm_partition,
                 "gpus_per_node": args.slurm_gpus, "slurm_array_parallelism": args.slurm_parallel,
                 **parse_method_args(args.slurm_arg)}
        codes = sweep.launch_submitit(todo, args.out / "_sweep_logs" / "submitit", args.launcher == "submitit-local",
                                      slurm, echo=lambda m: print(m, flush=True))
    failed = [d for d, c in codes.items() if c]
    print(f"sweep: {len(codes) - len(failed)} of {len(codes)} run(s) finished"
          + (f"; {len(failed)} failed (their logs say why): {', '.join(failed)}" if failed else ""))
    return EXIT_FAILED if failed else 0


def check_writable(run_dir: Path) -> None:
    """Fail before any work when the run directory cannot be written, with the folder and the fix."""
    import os
    import tempfile

    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-check-"):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise CLIError(f"--out {run_dir}: cannot write there ({why}); pick a folder you can write to") from err
    if not os.access(run_dir, os.W_OK):
        raise CLIError(f"--out {run_dir}: cannot write there (permission denied); pick a folder you can write to")


def summary_lines(summary: dict, indent: str = "  ") -> str:
    """Summaries as the leaderboard shows them: ×100, one decimal."""
    from cifc_bench.evaluation.metrics import display_scale

    def line(metric, stats):
        scale, unit = display_scale(metric)
        text = f"{indent}{metric} ({unit}): " + ", ".join(f"{k} {scale * v:.1f}" for k, v in stats.items()
                                                         if isinstance(v, (int, float)))
        left_out = stats.get("undefined_for")
        return text + (f" (over the other concepts: undefined for {', '.join(left_out)})" if left_out else "")

    return "\n".join(line(metric, stats) for metric, stats in summary.items())
