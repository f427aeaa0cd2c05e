"""``cifc-bench synth``: the synthetic tier's own commands, added to the CLI through the entry-point group
``cifc_bench.commands`` (the core CLI never names them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(sub) -> None:
    """Add ``synth pretrain|check|gates|neglect`` to the CLI's sub-parsers; ``run`` handles them."""
    sy = sub.add_parser("synth", help="the embedded synthetic world: pretrain and check its models")
    sy.set_defaults(handler=run)
    ssub = sy.add_subparsers(dest="synth_command", required=True)
    sp = ssub.add_parser("pretrain", help="train the synthetic base model and scorer from a seed, in resumable chunks")
    sp.add_argument("--out", type=Path, help="output folder (default: the package's committed weights folder)")
    sp.add_argument("--state", type=Path, help="where the chunks' training state is kept (default: OUT/pretrain-state; for the "
                         "committed weights, synth-pretrain-state/ in the checkout)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--resume", action="store_true",
                    help="continue the pretraining under way in the state folder (after a kill, or chunk by chunk)")
    sp.add_argument("--chunks", type=int, help="run at most this many chunks now, then stop (resume later)")
    sp.add_argument("--hours", type=float, help="stop after about this long, saving the state mid-chunk (resume later)")
    sp.add_argument("--unet-steps", type=int, help="base-model training steps (default: the committed recipe's)")
    sp.add_argument("--scorer-steps", type=int, help="scorer training steps (default: the committed recipe's)")
    sc = ssub.add_parser("check", help="measure the tier's gates: the base model (context_acc, class_acc, two-object "
                                       "binding), the exact oracles' soundness and the scorer's cnr of perfect renders")
    sc.add_argument("--prompts", type=int, default=200, help="held-out prompts to generate")
    sc.add_argument("--per-class", type=int, default=40, help="class-word images per class")
    sc.add_argument("--per-prompt", type=int, default=40, help="perfect renders and class-word images per boxed prompt")
    sc.add_argument("--grid", type=Path, help="also save a PNG grid: a row of class-word samples per class, then "
                                              "two-object samples")
    sc.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    sg = ssub.add_parser("gates", help="learning margin and forgetting of a method's synth10 runs versus base")
    sg.add_argument("--method", default="finetune")
    sg.add_argument("--metric", action="append", help="metric(s) of the gates (default: ia and identity_acc)")
    sg.add_argument("--results", type=Path, default=Path("results"))
    sg.add_argument("--include-dirty", action="store_true")
    sn = ssub.add_parser("neglect", help="why runs' exact neglect rate is what it is: per concept, how often its fill "
                                         "and pattern colours show in the final multi-concept images")
    sn.add_argument("runs", type=Path, nargs="+", help="run directories with their images")
    sn.add_argument("--json", type=Path, help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from cifc_bench.cli import CLIError

    if args.synth_command == "pretrain":
        from cifc_bench.synth import pretrain_state_dir, weights_dir
        from cifc_bench.synth.pretrain import PretrainError, chunk_ranges, pretrain
        from cifc_bench.synth.pretrain_data import PretrainConfig

        overrides = {k: v for k, v in (("unet_steps", args.unet_steps), ("scorer_steps", args.scorer_steps)) if v}
        cfg = dataclasses.replace(PretrainConfig(seed=args.seed), **overrides)
        out = args.out or weights_dir()
        state = args.state or (None if args.out else pretrain_state_dir())  # the committed weights' state: outside
        try:
            log = pretrain(cfg, out, state, resume=args.resume, max_chunks=args.chunks,
                           max_seconds=args.hours * 3600 if args.hours else None)
        except PretrainError as err:
            raise CLIError(str(err)) from err
        done = len(log["chunks"])
        total = 1 + len(chunk_ranges(cfg))
        spent = sum(c["seconds"] for c in log["chunks"])
        left = "complete" if done == total else f"resume with --resume for the other {total - done}"
        if log.get("paused"):
            left = f"paused in chunk {log['paused']['chunk']} at UNet step {log['paused']['unet_step']}; " + left
        print(f"pretraining in {out}: {done} of {total} chunks done in {spent / 60:.0f} min; {left}")
        return 0
    if args.synth_command == "gates":
        from cifc_bench.synth.gates import gate_report

        try:
            print(json.dumps({m: gate_report(args.results, args.method, metric=m, include_dirty=args.include_dirty)
                              for m in args.metric or ("ia", "identity_acc")}, indent=1))
        except ValueError as err:
            raise CLIError(str(err)) from err
        return 0
    if args.synth_command == "neglect":
        return neglect_command(args.runs, args.json)
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer
    from cifc_bench.synth.base_report import base_model_report, oracle_report, world_report
    from cifc_bench.synth.protocol import ensure_data

    bundle, scorer = load_bundle("synth"), load_scorer("synth")
    report = base_model_report(bundle, scorer, n_prompts=args.prompts, images_per_class=args.per_class)
    sequence = load_protocol("synth10").bind(ensure_data(None))
    report["oracles"] = oracle_report(bundle, scorer, sequence, per_prompt=args.per_prompt)
    report["world"] = world_report()
    numbers = {k: v for k, v in report.items() if k not in ("images", "class_images", "pair_images")}
    print(json.dumps(numbers, indent=1))
    if args.json:
        from cifc_bench.core.results import write_json_atomic

        write_json_atomic(args.json, numbers)
    if args.grid:
        save_grid(args.grid, report["class_images"], args.per_class, report["pair_images"])
    return 0


def neglect_command(runs: list[Path], json_path: Path | None) -> int:
    """Print a row per run: its exact neglect rate, the rate with the fill colour alone, and the mean rate at
    which its concepts show each part."""
    import pandas as pd

    from cifc_bench.cli import CLIError
    from cifc_bench.synth.neglect_parts import diagnose

    try:
        found = [diagnose(run) for run in runs]
    except (ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from err
    rows = [{"run": d["run"], "images": d["images"], "neglect": 100 * d["neglect"],
             "neglect (fill only)": 100 * d["neglect_fill_only"],
             **{f"{part} shown": 100 * float(pd.Series([c[part] for c in d["concepts"].values()]).mean())
                for part in next(iter(d["concepts"].values()))}} for d in found]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".1f"))
    if json_path:
        from cifc_bench.core.results import write_json_atomic

        write_json_atomic(json_path, found)
    return 0


def save_grid(path: Path, class_images, per_class: int, pair_images, columns: int = 10) -> None:
    """One row of class-word samples per class (in the world's class order), then rows of two-object samples."""
    import numpy as np
    from PIL import Image

    rows = [[np.asarray(im) for im in class_images[k * per_class : k * per_class + columns]]
            for k in range(len(class_images) // per_class)]
    pairs = [np.asarray(im) for im in pair_images]
    rows += [pairs[r : r + columns] for r in range(0, min(len(pairs), 2 * columns), columns)]
    rows = [r for r in rows if len(r) == columns]
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(path)
