"""Projected wall time of the synth10 3.0 grid (results/regenerate-synth10.sh) before it is made, from measured
costs: each method's training and evaluation seconds in the committed 2.0 grid (results/archive/synth10-2.0, 60
steps a task), scaled by what the same change cost finetune, measured on the committed 3.0 finetune runs (240
steps; evaluation with more prompts and tracks, in a second process beside training). A run's wall is then the
larger of its training and its evaluation (they overlap), plus its last evaluation, which runs alone. Ablations
and λ sweeps evaluate no track: their evaluation is scaled from 2.0's runs without tracks.

    python results/synth-check/grid_projection.py
"""

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLD = ROOT / "results" / "archive" / "synth10-2.0"
NEW = ROOT / "results" / "synth10"
METHODS = ("finetune", "cidm", "lora-m", "mix-of-show", "custom-diffusion", "lora-c", "ewc", "lwf", "c-lora")
#: runs of each kind in the grid script: 9 methods x 3 seeds and base once; CIDM's 2 variants x (1 + 4 switches) x 3
#: seeds; 4 EWC and 4 C-LoRA strengths, one seed
GRID = {"main": [(m, 3) for m in METHODS] + [("base", 1)], "ablations": [("cidm", 30)],
        "sweeps": [("ewc", 4), ("c-lora", 4)]}


def seconds(path: Path) -> tuple[float, float, float]:
    tasks = json.loads(path.read_text())["tasks"]
    return (sum(t.get("train_seconds") or 0 for t in tasks), sum(t.get("eval_seconds") or 0 for t in tasks),
            tasks[-1].get("eval_seconds") or 0)


def old_costs(method: str, with_tracks: bool) -> tuple[float, float, float]:
    runs = [seconds(p) for p in (OLD / method).glob("*/result.json")
            if bool(json.loads(p.read_text())["run_info"]["config"].get("tracks")) == with_tracks]
    if not runs:
        runs = [seconds(p) for p in (OLD / method).glob("*/result.json")]
    return tuple(statistics.median(r[k] for r in runs) for k in range(3))


def main() -> None:
    new = [seconds(p) for p in (NEW / "finetune").glob("s*/result.json")]
    old = old_costs("finetune", True)
    train_scale = statistics.median(r[0] for r in new) / old[0]
    eval_scale = statistics.median(r[1] for r in new) / old[1]
    last_scale = statistics.median(r[2] for r in new) / old[2]
    print(f"finetune 2.0 -> 3.0, medians over {len(new)} runs: training x{train_scale:.2f}, evaluation x{eval_scale:.2f}, "
          f"last evaluation x{last_scale:.2f}")
    total = 0.0
    for part, runs in GRID.items():
        hours = 0.0
        for method, n in runs:
            train, evaluate, last = old_costs(method, part == "main")
            train, evaluate, last = train * train_scale, evaluate * eval_scale, last * last_scale
            wall = max(train, evaluate) + last
            hours += n * wall / 3600
            print(f"  {part:9s} {method:17s} x{n:2d}: {wall / 60:5.1f} min a run (training {train / 60:.1f}, "
                  f"evaluation {evaluate / 60:.1f})")
        print(f"{part}: {hours:.1f} h")
        total += hours
    print(f"grid: {total:.1f} h projected (target 6 h)")


if __name__ == "__main__":
    main()
