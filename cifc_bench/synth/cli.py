"""``cifc-bench synth``: the synthetic tier's own commands, added to the CLI through the entry-point group
``cifc_bench.commands`` (the core CLI never names them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_command(sub) -> None:
    """Add ``synth pretrain|check|gates`` to the CLI's sub-parsers; ``run`` handles them."""
    sy = sub.add_parser("synth", help="the embedded synthetic world: pretrain and check its models")
    sy.set_defaults(handler=run)
    ssub = sy.add_subparsers(dest="synth_command", required=True)
    sp = ssub.add_parser("pretrain", help="train the synthetic base model and scorer from a seed, in resumable chunks")
    sp.add_argument("--out", type=Path, help="output folder (default: the package's committed weights folder)")
    sp.add_argument("--state", type=Path, help="where the chunks' training state is kept (default: OUT/pretrain-state)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--resume", action="store_true",
                    help="continue the pretraining under way in the state folder (after a kill, or chunk by chunk)")
    sp.add_argument("--chunks", type=int, help="run at most this many chunks now, then stop (resume later)")
    sp.add_argument("--unet-steps", type=int, help="base-model training steps (default: the committed recipe's)")
    sp.add_argument("--scorer-steps", type=int, help="scorer training steps (default: the committed recipe's)")
    sc = ssub.add_parser("check", help="measure the base model's gates: context_acc and class_acc")
    sc.add_argument("--prompts", type=int, default=200, help="held-out prompts to generate")
    sc.add_argument("--grid", type=Path, help="also save a PNG grid of generated samples here")
    sc.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    sg = ssub.add_parser("gates", help="learning margin and forgetting of a method's synth10 runs versus base")
    sg.add_argument("--method", default="finetune")
    sg.add_argument("--results", type=Path, default=Path("results"))
    sg.add_argument("--include-dirty", action="store_true")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from cifc_bench.cli import CLIError

    if args.synth_command == "pretrain":
        from cifc_bench.synth import weights_dir
        from cifc_bench.synth.pretrain import PretrainConfig, PretrainError, chunk_ranges, pretrain

        overrides = {k: v for k, v in (("unet_steps", args.unet_steps), ("scorer_steps", args.scorer_steps)) if v}
        cfg = dataclasses.replace(PretrainConfig(seed=args.seed), **overrides)
        out = args.out or weights_dir()
        try:
            log = pretrain(cfg, out, args.state, resume=args.resume, max_chunks=args.chunks)
        except PretrainError as err:
            raise CLIError(str(err)) from err
        done = len(log["chunks"])
        total = 1 + len(chunk_ranges(cfg))
        spent = sum(c["seconds"] for c in log["chunks"])
        left = "complete" if done == total else f"resume with --resume for the other {total - done}"
        print(f"pretraining in {out}: {done} of {total} chunks done in {spent / 60:.0f} min; {left}")
        return 0
    if args.synth_command == "gates":
        from cifc_bench.synth.gates import gate_report

        try:
            print(json.dumps(gate_report(args.results, args.method, include_dirty=args.include_dirty), indent=1))
        except ValueError as err:
            raise CLIError(str(err)) from err
        return 0
    from cifc_bench.models import load_bundle
    from cifc_bench.scoring import load_scorer
    from cifc_bench.synth.base_report import base_model_report

    report = base_model_report(load_bundle("synth"), load_scorer("synth"), n_prompts=args.prompts)
    numbers = {k: v for k, v in report.items() if k not in ("images", "class_images")}
    print(json.dumps(numbers, indent=1))
    if args.json:
        from cifc_bench.results import write_json_atomic

        write_json_atomic(args.json, numbers)
    if args.grid:
        import numpy as np
        from PIL import Image

        ims = [np.asarray(im) for im in report["images"][:64]]
        rows = [np.concatenate(ims[r * 8 : r * 8 + 8], axis=1) for r in range(len(ims) // 8)]
        Image.fromarray(np.concatenate(rows, axis=0)).resize((8 * 128, len(rows) * 128), Image.NEAREST).save(args.grid)
    return 0
