"""The ``cifc-bench`` command line.

    cifc-bench run --method cidm --protocol cifc10          # train + evaluate, writes results/<protocol>/...
    cifc-bench run --resume RUN_DIR                         # continue a killed run
    cifc-bench sweep --methods finetune cidm --seeds 0 1 2  # a grid of runs; again: only what is missing
    cifc-bench generate RUN_DIR --prompt "a {dog1} on the beach"   # images with what a run learned
    cifc-bench validate --protocol cifc10 --data-dir DIR
    cifc-bench data fetch cifc10 [--to DIR]
    cifc-bench leaderboard --protocol cifc10 --format md|csv|latex
    cifc-bench report RUN_DIR [RUN_DIR ...] [--out DIR]
    cifc-bench rescore RUN_DIR [RUN_DIR ...] [--scorer NAME]   # new scores from a run's saved images
    cifc-bench ls methods|protocols

Heavy libraries are imported inside the commands, so ``ls`` and ``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 3  # a run that started and failed (diverged): result.json has status "failed" and the finished tasks


class CLIError(Exception):
    """A user error: printed as one clear message, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from cifc_bench.config import ConfigError
    from cifc_bench.data import DataError
    from cifc_bench.dino import DinoLoadError
    from cifc_bench.generate import GenerateError
    from cifc_bench.models import ModelLoadError
    from cifc_bench.protocol import ProtocolError
    from cifc_bench.registry import PluginError
    from cifc_bench.scoring import ScorerLoadError
    from cifc_bench.sweep import SweepError

    return (CLIError, ConfigError, DataError, DinoLoadError, GenerateError, ModelLoadError, PluginError, ProtocolError,
            ScorerLoadError, SweepError, FileNotFoundError)


def _parse_method_args(items: Sequence[str]) -> dict:
    from cifc_bench.config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--method-args {item!r}: write KEY=VALUE, e.g. --method-args rank=4 lr=1e-4")
        out[key.strip()] = parse_value(value)
    return out


def _track_names(text: str) -> tuple[str, ...]:
    """``--tracks a,b`` (or ``none``) as a tuple of names; the protocol checks that they exist."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    return () if names == ("none",) else names


def _add_setting_flags(r: argparse.ArgumentParser) -> None:
    """The run settings every run of a command shares (``run``, ``sweep``): one flag per setting."""
    from cifc_bench.config import DTYPES

    r.add_argument("--protocol", help="protocol name or YAML path (default: the installed protocol marked "
                                      "`default: true`, the CPU world)")
    r.add_argument("--method-args", nargs="*", default=[], metavar="KEY=VALUE", help="method hyper-parameters")
    r.add_argument("--config", type=Path, help="YAML file with run settings; command-line flags override it")
    r.add_argument("--data-dir", help="dataset folder (else $CIFC_BENCH_DATA, else the user cache)")
    r.add_argument("--model", help="hub id, local diffusers folder, or tiny-random (default: the protocol's)")
    r.add_argument("--scorer", help="clip-vit-b32, tiny-random or open_clip:ARCH:PRETRAINED (default: the protocol's)")
    r.add_argument("--steps", type=int, help="training steps of every task (fixed budget, independent of GPU count); "
                                            "implies --schedule shared")
    r.add_argument("--schedule", help="per-task training schedule: shared (--steps for every task) or one the "
                                      "protocol names, e.g. release on cifc10 (default: the protocol's for the method)")
    r.add_argument("--batch-size", type=int, help="training batch size")
    r.add_argument("--prompts-per-concept", type=int, help="evaluation prompts per concept (first N of its set)")
    r.add_argument("--images-per-prompt", type=int, help="evaluation images per prompt")
    r.add_argument("--resolution", type=int, help="training and sampling resolution in pixels")
    r.add_argument("--num-inference-steps", type=int, help="sampler steps")
    r.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale")
    r.add_argument("--negative-prompt", help="the unconditional prompt of guidance (default: the protocol's)")
    r.add_argument("--eval-schedule", choices=("each-task", "final"), help="evaluate after each task (default) or once")
    r.add_argument("--eval-batch-size", type=int, help="images generated per batch")
    r.add_argument("--log-to", type=_track_names, metavar="LOGGER[,LOGGER]",
                   help="experiment loggers: training losses and each evaluation's summaries (tensorboard; "
                        "cifc-bench ls loggers)")
    r.add_argument("--eval-workers", type=int, choices=(0, 1),
                   help="1: a second one-thread process generates each state's evaluation images while the next "
                        "task trains (same images; synth10's default on a CPU); 0: the run's process does both")
    r.add_argument("--dino", help="DINO model for ia_dino: dino-vits16, tiny-random, timm:MODEL[:FILE], or none "
                                  "(default: the protocol's)")
    r.add_argument("--multi-images-per-prompt", type=int, help="images per multi-concept prompt (neglect rate)")
    r.add_argument("--calibration-images", type=int,
                   help="base-model class-word images per concept that calibrate the presence thresholds")
    r.add_argument("--tracks", type=_track_names, metavar="TRACK[,TRACK]|none",
                   help="the protocol's image-conditioned tracks to evaluate, e.g. style_transfer,editing "
                        "(default: all it defines), evaluated whenever the schedule evaluates")
    r.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    r.add_argument("--dtype", choices=DTYPES, help="precision of the frozen weights, run under autocast; trainable "
                                                   "parameters and optimiser state stay fp32 (default: bf16 on CUDA, "
                                                   "fp32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    from cifc_bench.sweep import LAUNCHERS

    p = argparse.ArgumentParser(prog="cifc-bench", description="Benchmark continual customization of diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a method on a protocol's task stream and evaluate it")
    r.add_argument("--method", help="registered method name or package.module:Class (default: finetune)")
    r.add_argument("--seed", type=int, help="training seed (evaluation seeds are fixed by the protocol)")
    _add_setting_flags(r)
    r.add_argument("--out", type=Path, help="run directory (default: runs/<protocol>/<method>/<timestamp>-s<seed>; "
                                            "the reference runs in results/ change only with an explicit --out)")
    r.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last finished task")
    r.add_argument("--dry-run", action="store_true",
                   help="print the run's work (training steps, images, UNet passes, for both evaluation schedules) "
                        "and an estimated wall time from a short warm-up on the model and device; writes nothing")
    r.add_argument("--warmup-steps", type=int, default=4, metavar="N",
                   help="training steps the --dry-run warm-up times (0: counts only, no model or data needed)")

    sw = sub.add_parser("sweep", help="run a grid of methods x seeds x method arguments; run it again to finish "
                                      "what is missing (completed runs are skipped, partial ones resumed)")
    sw.add_argument("--methods", nargs="+", required=True, metavar="METHOD")
    sw.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED")
    sw.add_argument("--grid", nargs="*", default=[], metavar="[METHOD.]KEY=V1,V2",
                    help="method arguments to sweep: every combination, for every method or for the one named")
    _add_setting_flags(sw)
    sw.add_argument("--out", type=Path, default=Path("runs"),
                    help="root of the run directories, <out>/<protocol>/<method>/<args>s<seed> (default: runs)")
    sw.add_argument("--launcher", choices=LAUNCHERS, default="local",
                    help="local: N runs at a time here; slurm: a submitit job array; submitit-local: that array here")
    sw.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="local launcher: runs at a time (threads are split between them; GPUs given out in turn)")
    sw.add_argument("--slurm-partition")
    sw.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per job (default: 1)")
    sw.add_argument("--slurm-time", type=int, default=24 * 60, metavar="MINUTES",
                    help="time limit per job; a job that reaches it is requeued and resumes (default: 1440)")
    sw.add_argument("--slurm-parallel", type=int, help="most array jobs running at once")
    sw.add_argument("--slurm-arg", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more sbatch parameters for submitit, e.g. account=myproj mem_gb=64")

    g = sub.add_parser("generate", help="generate images with what a run learned, from your own prompt")
    g.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    g.add_argument("--prompt", required=True,
                   help='learned concepts in braces, e.g. "a photo of {dog1} on the beach" (cifc-bench generate '
                        "lists them when one is unknown)")
    g.add_argument("--n", type=int, default=4, help="images (seeds --seed, --seed + 1, ...; default 4)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--after-task", type=int, metavar="N", help="the model after task N (default: the last finished)")
    g.add_argument("--box", nargs="+", action="extend", default=[], metavar="CONCEPT=Y0,X0,Y1,X1",
                   help="one box per concept the prompt names (fractions of the image): a multi-concept request")
    g.add_argument("--region-prompt", nargs="+", action="extend", default=[], metavar="CONCEPT=TEXT",
                   help="the prompt of a concept's box (default: 'a {concept}')")
    g.add_argument("--out", type=Path, help="folder for the images, grid.png and request.json "
                                            "(default: generated/<run>-<timestamp>)")
    g.add_argument("--init-image", type=Path, metavar="PATH",
                   help="redraw this image: style transfer with --strength, editing inside --mask-box")
    g.add_argument("--strength", type=float, metavar="S",
                   help="style transfer: how much of the sampler to redo on the input, in (0, 1] (e.g. 0.6)")
    g.add_argument("--mask-box", metavar="Y0,X0,Y1,X1",
                   help="editing: only this box of the input changes (fractions of the image)")
    g.add_argument("--device", help="default: the run's")

    v = sub.add_parser("validate", help="check a protocol file and its data")
    v.add_argument("--protocol", required=True)
    v.add_argument("--data-dir")
    v.add_argument("--no-checksums", action="store_true", help="skip the checksum comparison")

    d = sub.add_parser("data", help="dataset commands")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download and verify a dataset")
    f.add_argument("dataset")
    f.add_argument("--to", type=Path, help="target folder (default: the user cache)")
    f.add_argument("--url", help="alternative archive URL (a mirror, or file:// for a local archive)")

    lb = sub.add_parser("leaderboard", help="compare runs: mean ± std over seeds per method")
    lb.add_argument("--protocol", required=True)
    lb.add_argument("--results", type=Path, nargs="+", default=[Path("results")],
                    help="folder(s) to scan for result.json files (default: results, the reference runs; add runs "
                         "for yours: --results results runs)")
    lb.add_argument("--format", choices=("md", "csv", "latex", "html"), default="md",
                    help="md, csv or latex on stdout (or --out FILE); html: a page with the tables and plots "
                         "(plasticity and stability, every method's matrix, neglect) in --out DIR")
    lb.add_argument("--out", type=Path,
                    help="write there instead of stdout; the folder of the html page (default: leaderboard-<protocol>)")
    lb.add_argument("--metric", action="append",
                    help="metric(s) to show, cnr for the neglect table (default: ia, ta, and ia_dino, context_acc "
                         "and cnr where runs have them)")
    lb.add_argument("--include-failed", action="store_true")
    lb.add_argument("--include-dirty", action="store_true", help="include runs made from an uncommitted source tree")
    lb.add_argument("--include-old-versions", action="store_true",
                    help="include runs made with an older version of a method's implementation (not comparable)")
    lb.add_argument("--no-reference", action="store_true", help="hide the paper's reported rows")

    rp = sub.add_parser("report", help="write a self-contained HTML report of one run, or several side by side")
    rp.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    rp.add_argument("--out", type=Path,
                    help="report folder (default: RUN_DIR/report for one run, ./report for several)")

    rs = sub.add_parser("rescore", help="score runs again from their saved images (after a scorer change)")
    rs.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    rs.add_argument("--scorer", help="score with this scorer instead of the run's own (default: its name, current "
                                     "weights)")
    rs.add_argument("--device", help="device to score on (default: the run's)")

    ex = sub.add_parser("export", help="every run's numbers as one tidy table (parquet or csv)")
    ex.add_argument("paths", nargs="+", type=Path, metavar="RESULTS", help="run folders, folders of runs, result.json")
    ex.add_argument("--level", choices=("summary", "matrix", "image"), default="matrix",
                    help="summary: a run's summaries; matrix: R[task][concept]; image: each image's score")
    ex.add_argument("--format", choices=("parquet", "csv"), help="default: from --out's suffix")
    ex.add_argument("--out", type=Path, required=True)

    from cifc_bench.registry import COMMANDS, KINDS, list_plugins

    ls = sub.add_parser("ls", help="list registered plugins of one kind")
    ls.add_argument("what", choices=tuple(KINDS))
    for name, ep in list_plugins(COMMANDS).items():  # plugins' own sub-commands (e.g. the synthetic tier's)
        try:
            ep.load()(sub)
        except Exception as err:  # a broken plugin must not take the other commands down
            print(f"cifc-bench: command plugin {name!r} ({ep.value}) failed to load: {err}", file=sys.stderr)
    return p


def _given_settings(args: argparse.Namespace) -> dict:
    """The run settings typed on the command line over those of --config, nothing filled in (one name each:
    ``--x-y`` is the setting ``x_y``, as in the YAML file and the protocol's defaults)."""
    import yaml

    from cifc_bench.config import resolve, setting_names

    data = {}
    if args.config:
        if not args.config.is_file():
            raise CLIError(f"--config {args.config}: no such file")
        data = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(data, dict):
            raise CLIError(f"--config {args.config}: give a mapping of run settings (e.g. steps: 800)")
    flags = {k: getattr(args, k) for k in setting_names() if k != "method_args" and getattr(args, k, None) is not None}
    if args.method_args:
        flags["method_args"] = _parse_method_args(args.method_args)
    spec = resolve(flags, data)  # checks names and values, and the --steps/--schedule conflict
    return {k: v for k, v in spec.to_dict().items() if k in {*flags, *data}}


def _run_config(data: dict):
    from cifc_bench.config import RunSpec, default_device
    from cifc_bench.protocol import protocol_or_default

    data = dict(data)
    data.setdefault("device", default_device())
    data["protocol"] = protocol_or_default(data.get("protocol"))
    return RunSpec.from_dict(data)


def cmd_run(args: argparse.Namespace) -> int:
    from cifc_bench.harness import run_benchmark

    given = _given_settings(args)
    if args.dry_run:
        if args.resume:
            raise CLIError("--dry-run plans a new run; to see what a resumed run has left, drop --resume")
        return dry_run(_run_config(given), args.warmup_steps)
    from cifc_bench.distributed import join

    if args.resume:
        ranks = join()
        result = run_benchmark(None, args.resume, resume=True, given=given)
        run_dir = args.resume
    else:
        config = _run_config(given)
        ranks = join()  # under torchrun / accelerate launch: one run shared by the processes
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        # your runs go to runs/; the committed reference runs in results/ change only with an explicit --out
        run_dir = ranks.broadcast(args.out or Path("runs") / Path(config.protocol).stem /
                                  config.method.replace(":", "_") / f"{stamp}-s{config.seed}")  # chosen once
        _check_writable(run_dir)
        result = run_benchmark(config, run_dir)
    if ranks.main:
        print(f"run {result['status']}: {run_dir}/result.json\n{_summary_lines(result['summary'])}")
    return 0


def dry_run(config, warmup_steps: int) -> int:
    """Print the work of ``config`` for its evaluation schedule and the other one, then (``warmup_steps`` > 0)
    time a warm-up on the model and device and print the estimated wall time of both."""
    import tempfile

    from cifc_bench import plan
    from cifc_bench.config import EVAL_SCHEDULES
    from cifc_bench.harness import load_context, resolve_run

    if warmup_steps < 0:
        raise CLIError(f"--warmup-steps {warmup_steps}: give a whole number >= 0 (0: counts only)")
    config, spec, method_cls, budgets = resolve_run(config)
    sequence = spec.bind(Path(config.data_dir or "."), check=False)  # counts need the protocol, not its data
    schedules = (config.eval_schedule, *(s for s in EVAL_SCHEDULES if s != config.eval_schedule))
    plans = {s: plan.work_plan(config, sequence, budgets, s, method_cls) for s in schedules}
    print(f"dry run: {config.method} on {spec.name} (schedule {config.schedule}), model {config.model}, "
          f"device {config.device}, {config.dtype}; nothing is written")
    for s, p in plans.items():
        which = "this run" if s == config.eval_schedule else f"with --eval-schedule {s}"
        print(f"eval schedule {s} ({which}):" + "".join(f"\n  {line}" for line in plan.describe(p)))
    if warmup_steps == 0:
        return 0
    print(f"warm-up: {warmup_steps + 2} training steps and 3 image batches of task 1 on {config.device} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="cifc-dry-run-") as tmp:  # the run directory is never written
        ctx = load_context(config, Path(tmp), calibration={"thresholds": []})
        with ctx.precision():
            warm = plan.measure_warmup(ctx, warmup_steps)
    multi = f", {warm.multi_image:.3g} s per multi-concept image" if warm.multi_image is not None else ""
    print(f"  measured: {warm.step:.3g} s per training step + {warm.per_task:.3g} s per task, "
          f"{warm.concept_image:.3g} s per concept image{multi}, {warm.base_image:.3g} s per base-model image")
    for s, p in plans.items():
        print(f"  estimated wall time ({s}): {plan.format_duration(plan.estimate_seconds(p, warm))} "
              "(an estimate: work that grows with the number of stored tasks is timed at task 1)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cifc_bench.generate import generate_from_run

    if not (args.run_dir / "result.json").is_file():
        raise CLIError(f"no result.json in {args.run_dir}; pass a run directory (runs/<protocol>/<method>/<run>)")
    grid, images = generate_from_run(args.run_dir, args.prompt, args.n, args.seed, args.out, args.after_task,
                                     args.box, args.region_prompt, args.device, args.init_image, args.strength,
                                     args.mask_box)
    print(f"generated {len(images)} image(s): {grid.parent} (grid: {grid})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cifc_bench import sweep

    if args.jobs < 1:
        raise CLIError(f"--jobs {args.jobs}: give a whole number >= 1")
    given = _given_settings(args)
    fixed = given.pop("method_args", {})
    from cifc_bench.protocol import protocol_or_default
    from cifc_bench.registry import load_method

    given["protocol"] = protocol_or_default(given.get("protocol"))

    classes = {method: load_method(method) for method in args.methods}  # a typo should fail before anything starts
    one_seed = [m for m, cls in classes.items() if getattr(cls, "seed_invariant", False) and len(args.seeds) > 1]
    for method in one_seed:
        print(f"sweep: {method!r} cannot depend on the seed (it learns nothing): one run, seed {args.seeds[0]}, "
              f"serves every seed", flush=True)
    grid = sweep.parse_grid(args.grid, args.methods)
    jobs = sweep.expand(args.methods, args.seeds, grid, args.out, given["protocol"], fixed, given, one_seed)
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
                 **_parse_method_args(args.slurm_arg)}
        codes = sweep.launch_submitit(todo, args.out / "_sweep_logs" / "submitit", args.launcher == "submitit-local",
                                      slurm, echo=lambda m: print(m, flush=True))
    failed = [d for d, c in codes.items() if c]
    print(f"sweep: {len(codes) - len(failed)} of {len(codes)} run(s) finished"
          + (f"; {len(failed)} failed (their logs say why): {', '.join(failed)}" if failed else ""))
    return EXIT_FAILED if failed else 0


def _check_writable(run_dir: Path) -> None:
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


def _summary_lines(summary: dict, indent: str = "  ") -> str:
    """Summaries as the leaderboard shows them: ×100, one decimal."""
    from cifc_bench.metrics import display_scale

    def line(metric, stats):
        scale, unit = display_scale(metric)
        text = f"{indent}{metric} ({unit}): " + ", ".join(f"{k} {scale * v:.1f}" for k, v in stats.items()
                                                         if isinstance(v, (int, float)))
        left_out = stats.get("undefined_for")
        return text + (f" (over the other concepts: undefined for {', '.join(left_out)})" if left_out else "")

    return "\n".join(line(metric, stats) for metric, stats in summary.items())


def cmd_validate(args: argparse.Namespace) -> int:
    from cifc_bench.protocol import ProtocolError, load_protocol

    spec = load_protocol(args.protocol)
    root = spec.data_root(args.data_dir)
    problems = spec.check_data(root, verify_checksums=not args.no_checksums)
    if problems:
        raise ProtocolError(f"protocol {spec.name!r} with data {root}: {len(problems)} problem(s):\n  - "
                            + "\n  - ".join(problems))
    seq = spec.bind(root, check=False)
    n_images = sum(len(c.image_paths()) for c in seq.concepts)
    print(f"protocol {seq.name} v{seq.version}: OK, {len(seq.tasks)} tasks, {n_images} reference images, "
          f"{len(seq.multi_concept_prompts)} multi-concept prompts (data: {root})")
    for t in seq.tasks:
        for c in t.concepts:
            print(f"  task {t.index + 1:>2}: {c.name:<14} {c.kind:<6} {c.token_string:<28} "
                  f"{len(c.image_paths())} images, {len(c.eval_prompts)} '{c.prompt_set}' prompts")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cifc_bench.data import fetch
    from cifc_bench.protocol import load_protocol

    spec = load_protocol(args.dataset)
    if spec.checksum_file is None:
        raise CLIError(f"protocol {args.dataset!r} publishes no checksums, so its data cannot be fetched and verified")
    path = fetch(spec.dataset, args.to, spec.checksum_file, url=args.url)
    print(f"{spec.dataset}: verified copy at {path}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from cifc_bench.leaderboard import leaderboard_tables, render

    missing = [str(p) for p in args.results if not Path(p).is_dir()]
    if missing:
        raise CLIError(f"--results {' '.join(missing)}: no such folder; give the folders that hold run directories "
                       "(the reference runs are in results/, yours in runs/: --results results runs)")
    if args.format == "html":
        from cifc_bench.leaderboard_page import write_leaderboard_page

        if args.metric:
            raise CLIError("--metric picks tables of the text formats; the html page shows every table")
        page = write_leaderboard_page(args.protocol, args.results, args.out or Path(f"leaderboard-{args.protocol}"),
                                      args.include_failed, args.include_dirty, args.include_old_versions,
                                      references=not args.no_reference)
        print(f"leaderboard: {page}")
        return 0
    tables, skipped, n = leaderboard_tables(
        args.protocol, args.results, args.include_failed, args.include_dirty,
        tuple(args.metric) if args.metric else None, references=not args.no_reference,
        include_old_versions=args.include_old_versions,
    )
    text = render(tables, args.format)
    if args.out and args.format == "md":  # a page of its own: say how it was made, so nobody edits it by hand
        command = " ".join(["cifc-bench", *sys.argv[1:]]) if sys.argv[1:2] == ["leaderboard"] else \
            f"cifc-bench leaderboard --protocol {args.protocol} --format md --out {args.out}"
        text = (f"<!-- generated by `{command}` from {n} run(s); do not edit by hand -->\n\n"
                f"# Leaderboard: {args.protocol}\n\n{n} run(s) from {', '.join(map(str, args.results))}, "
                f"{len(skipped)} left out.\n\n{text}")
    if args.out:
        from cifc_bench.results import write_text_atomic

        write_text_atomic(args.out, text)
        print(f"leaderboard: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"{n} run(s) from {', '.join(map(str, args.results))}; {len(skipped)} left out", file=sys.stderr)
    for line in skipped:
        print(f"  left out: {line}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cifc_bench.report import write_report

    out = args.out or (args.runs[0] / "report" if len(args.runs) == 1 else Path("report"))
    if out.resolve() in {r.resolve() for r in args.runs}:
        raise CLIError(f"--out {out} is a run directory; the report would replace it. Pick another folder.")
    page = write_report(args.runs, out)
    print(f"report: {page}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from cifc_bench.rescore import rescore_run
    from cifc_bench.results import read_result

    missing = [str(r) for r in args.runs if not (r / "result.json").is_file()]
    if missing:
        raise CLIError(f"no result.json in {', '.join(missing)}; pass run directories (results/<protocol>/<method>/<run>)")
    for run_dir in args.runs:
        before = read_result(run_dir)["summary"]
        result = rescore_run(run_dir, args.scorer, args.device)
        print(f"rescored {run_dir} with {result['run_info']['scorer']}\n  before:\n{_summary_lines(before, '    ')}"
              f"\n  after:\n{_summary_lines(result['summary'], '    ')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cifc_bench.results_data import export

    try:
        out, rows = export(args.paths, args.out, args.level, args.format)
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    print(f"export: {rows:,} rows ({args.level}) -> {out}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from cifc_bench.describe import describe
    from cifc_bench.registry import KINDS, list_plugins

    for name, ep in list_plugins(KINDS[args.what]).items():
        about = describe(ep.value)
        print(f"{name:<20} {about.summary}\n{'':<20} {ep.value}")
        if about.arguments:
            print(f"{'':<20} arguments: {', '.join(about.arguments)}")
    return 0


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "generate": cmd_generate, "validate": cmd_validate, "data": cmd_data, "leaderboard": cmd_leaderboard, "ls": cmd_ls,
            "export": cmd_export,
            "report": cmd_report, "rescore": cmd_rescore}


def main(argv: Sequence[str] | None = None) -> int:
    from cifc_bench.api import DivergenceError

    args = build_parser().parse_args(argv)
    try:
        return (getattr(args, "handler", None) or COMMANDS[args.command])(args)
    except _user_errors() as err:
        print(f"cifc-bench {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DivergenceError as err:  # the run ran and failed: no score, its result.json says so
        print(f"cifc-bench {args.command}: the run failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = getattr(args, "resume", None) or getattr(args, "out", None)
        fix = f"free some space, then continue with --resume {where}" if where else "free some space and run again"
        print(f"cifc-bench {args.command}: the disk is full ({err.filename or err}); {fix}: finished tasks and images "
              "are kept", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader went away (`cifc-bench ls methods | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
