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
    cifc-bench bench [--smoke]                               # the device's figures: s per image, TFLOP/s

Heavy libraries are imported inside the commands, so ``ls`` and ``--help`` stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cifc_bench.cli.bench import cmd_bench
from cifc_bench.cli.parser import EXIT_FAILED, EXIT_USAGE, CLIError, build_parser
from cifc_bench.cli.results import (
    cmd_data,
    cmd_export,
    cmd_leaderboard,
    cmd_ls,
    cmd_report,
    cmd_rescore,
    cmd_validate,
)
from cifc_bench.cli.run import cmd_generate, cmd_run, cmd_sweep


def _user_errors() -> tuple[type[BaseException], ...]:
    from cifc_bench.core.config import ConfigError
    from cifc_bench.core.data import DataError
    from cifc_bench.core.protocol_schema import ProtocolError
    from cifc_bench.core.registry import PluginError
    from cifc_bench.diffusion.dino import DinoLoadError
    from cifc_bench.diffusion.models import ModelLoadError
    from cifc_bench.diffusion.scoring import ScorerLoadError
    from cifc_bench.run.generate import GenerateError
    from cifc_bench.run.sweep import SweepError

    return (CLIError, ConfigError, DataError, DinoLoadError, GenerateError, ModelLoadError, PluginError, ProtocolError,
            ScorerLoadError, SweepError, FileNotFoundError)


COMMANDS = {"run": cmd_run, "bench": cmd_bench, "sweep": cmd_sweep, "generate": cmd_generate, "validate": cmd_validate, "data": cmd_data, "leaderboard": cmd_leaderboard, "ls": cmd_ls,
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
