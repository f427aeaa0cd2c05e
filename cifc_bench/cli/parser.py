"""The ``cifc-bench`` parser: every command's flags, and the run settings typed on the command line over
those of ``--config`` (one name each, as in the YAML file and the protocol's defaults)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2


EXIT_FAILED = 3  # a run that started and failed (diverged): result.json has status "failed" and the finished tasks


class CLIError(Exception):
    """A user error: printed as one clear message, exit code 2."""


def parse_method_args(items: Sequence[str]) -> dict:
    from cifc_bench.core.config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--method-args {item!r}: write KEY=VALUE, e.g. --method-args rank=4 lr=1e-4")
        out[key.strip()] = parse_value(value)
    return out


def track_names(text: str) -> tuple[str, ...]:
    """``--tracks a,b`` (or ``none``) as a tuple of names; the protocol checks that they exist."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    return () if names == ("none",) else names


def task_order_name(text: str) -> str:
    """``leaderboard --task-order``: an order name, or a usage error that names the bad value and the choices."""
    from cifc_bench.core.task_order import order_problem

    if problem := order_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return text


def batch_size(text: str) -> int | str:
    """``--eval-batch-size``: a whole number, or ``auto``."""
    return text if text == "auto" else int(text)


def add_setting_flags(r: argparse.ArgumentParser) -> None:
    """The run settings every run of a command shares (``run``, ``sweep``): one flag per setting."""
    from cifc_bench.core.config import DTYPES

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
    r.add_argument("--eval-batch-size", type=batch_size, metavar="N|auto",
                   help="images generated per batch; auto: the largest the device fits, chosen at the start "
                        "(the default on CUDA unless the protocol gives one)")
    r.add_argument("--log-to", type=track_names, metavar="LOGGER[,LOGGER]",
                   help="experiment loggers: training losses and each evaluation's summaries (tensorboard; "
                        "cifc-bench ls loggers)")
    r.add_argument("--eval-workers", type=int, choices=(0, 1),
                   help="1: a second one-thread process generates each state's evaluation images while the next "
                        "task trains (same images; synth10's default on a CPU); 0: the run's process does both")
    r.add_argument("--dino", help="DINO model for ia_dino: dino-vits16, tiny-random, timm:MODEL[:FILE], or none "
                                  "(default: the protocol's)")
    r.add_argument("--image-encoders", type=track_names, metavar="ENCODER[,ENCODER]",
                   help="more image encoders, each adding its own image alignment beside ia_dino: dinov2-vits14 "
                        "(ia_dinov2), dreamsim (ia_dreamsim; pip install 'cifc-bench[dreamsim]'); cifc-bench ls "
                        "image-encoders")
    r.add_argument("--multi-images-per-prompt", type=int, help="images per multi-concept prompt (neglect rate)")
    r.add_argument("--retention-prompts", type=int, metavar="N",
                   help="retention of the base model on the first N of the protocol's generic prompts (default: all)")
    r.add_argument("--calibration-images", type=int,
                   help="base-model class-word images per concept that calibrate the presence thresholds")
    r.add_argument("--tracks", type=track_names, metavar="TRACK[,TRACK]|none",
                   help="the protocol's image-conditioned tracks to evaluate, e.g. style_transfer,editing "
                        "(default: all it defines), evaluated whenever the schedule evaluates")
    r.add_argument("--task-order", metavar="protocol|reversed|random:SEED",
                   help="the order the concepts are learned in (default: the protocol's); each concept keeps its "
                        "prompts, image seeds and budget, so runs in two orders pair concept by concept")
    r.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    r.add_argument("--compile", action="store_true", default=None,
                   help="compile the UNet and the VAE decoder with torch.compile (channels_last on CUDA); images "
                        "equal eager's within float tolerance; the compile warm-up is reported apart")
    r.add_argument("--dtype", choices=DTYPES, help="precision of the frozen weights, run under autocast; trainable "
                                                   "parameters and optimiser state stay fp32 (default: bf16 on CUDA, "
                                                   "fp32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    from cifc_bench.run.sweep import LAUNCHERS

    p = argparse.ArgumentParser(prog="cifc-bench", description="Benchmark continual customization of diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a method on a protocol's task stream and evaluate it")
    r.add_argument("--method", help="registered method name or package.module:Class (default: finetune)")
    r.add_argument("--seed", type=int, help="training seed (evaluation seeds are fixed by the protocol)")
    add_setting_flags(r)
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
    sw.add_argument("--orders", nargs="+", metavar="ORDER",
                    help="task orders to cross with the seeds: protocol, reversed, random:SEED (default: --task-order)")
    add_setting_flags(sw)
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
    lb.add_argument("--task-order", type=task_order_name, default="protocol", metavar="protocol|reversed|random:SEED",
                    help="the order whose runs the tables rank (default: the protocol's); the order tables compare "
                         "every order with the protocol's whatever this is")

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

    be = sub.add_parser("bench", help="time the device: seconds per image (fp32, bf16, compiled) against diffusers' "
                                      "pipeline, the UNet's TFLOP/s, a training step of every method")
    be.add_argument("--smoke", action="store_true", help="the tiny model at 32 px: the same code in seconds, any CPU")
    be.add_argument("--sdxl", action="store_true", help="SDXL base's architecture (sdxl-random) at 1024 px; with "
                                                       "--smoke, sdxl-tiny-random")
    be.add_argument("--precisions", nargs="+", metavar="P", help="of fp32, bf16, bf16-compiled (default: all three)")
    be.add_argument("--methods", nargs="+", metavar="METHOD", help="methods whose training step is timed (default: all)")
    be.add_argument("--device", help="default: cuda when available, else cpu")
    be.add_argument("--out", type=Path, help="default: results/gpu-check/<date>-<device>-bench.json")

    from cifc_bench.core.registry import COMMANDS, KINDS, list_plugins

    ls = sub.add_parser("ls", help="list registered plugins of one kind")
    ls.add_argument("what", choices=tuple(KINDS))
    for name, ep in list_plugins(COMMANDS).items():  # plugins' own sub-commands (e.g. the synthetic tier's)
        try:
            ep.load()(sub)
        except Exception as err:  # a broken plugin must not take the other commands down
            print(f"cifc-bench: command plugin {name!r} ({ep.value}) failed to load: {err}", file=sys.stderr)
    return p


def given_settings(args: argparse.Namespace) -> dict:
    """The run settings typed on the command line over those of --config, nothing filled in (one name each:
    ``--x-y`` is the setting ``x_y``, as in the YAML file and the protocol's defaults)."""
    import yaml

    from cifc_bench.core.config import resolve, setting_names

    data = {}
    if args.config:
        if not args.config.is_file():
            raise CLIError(f"--config {args.config}: no such file")
        data = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(data, dict):
            raise CLIError(f"--config {args.config}: give a mapping of run settings (e.g. steps: 800)")
    flags = {k: getattr(args, k) for k in setting_names() if k != "method_args" and getattr(args, k, None) is not None}
    if args.method_args:
        flags["method_args"] = parse_method_args(args.method_args)
    spec = resolve(flags, data)  # checks names and values, and the --steps/--schedule conflict
    return {k: v for k, v in spec.to_dict().items() if k in {*flags, *data}}


def run_config(data: dict):
    from cifc_bench.core.config import RunSpec, default_device
    from cifc_bench.core.protocol import protocol_or_default

    data = dict(data)
    data.setdefault("device", default_device())
    data["protocol"] = protocol_or_default(data.get("protocol"))
    return RunSpec.from_dict(data)
