"""How much of CIDM's merged LoRA each concept's own task gets under elastic weight aggregation (EWA).

For each run directory given (a CIDM run with its final state), the final model's EWA weights for the first
evaluation prompt of every concept: the own task's weight, its share of the summed weights (what a uniform merge,
``ewa=false``, gives as 1/g), the largest other task's share, how often the own task gets the largest weight,
and each task's mean share. Averages over concepts and layers.

    python results/synth-check/cidm_ewa_weights.py RUN_DIR... [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def own_task_weights(run_dir: Path) -> dict:
    from cifc_bench.diffusion.layerwise import encode_layerwise
    from cifc_bench.run.generate import restore

    ctx, done = restore(run_dir)
    method = ctx.method
    concepts = ctx.sequence.concepts[:done]
    task_of = {c.name: i for i, task in enumerate(ctx.sequence.tasks[:done]) for c in task.concepts}
    prompts = [c.eval_prompts[0] for c in concepts]
    with torch.no_grad():
        cond = encode_layerwise(method.bundle, prompts, method.placeholders, method.n_layers)
        w = method.task_weights(cond)  # [B, L, g]
    share = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    own = torch.tensor([task_of[c.name] for c in concepts])
    rows = torch.arange(len(concepts))
    own_w, own_share = w[rows, :, own], share[rows, :, own]  # [B, L]
    others = share.clone()
    others[rows, :, own] = -1.0
    return {"run": str(run_dir), "variant": method.variant, "ewa": method.use_ewa, "tasks": w.shape[-1],
            "uniform_share": 1.0 / w.shape[-1], "own_weight": float(own_w.mean()),
            "own_share": float(own_share.mean()), "largest_other_share": float(others.max(-1).values.mean()),
            "own_is_largest": float((share.argmax(-1) == own[:, None]).float().mean()),
            "mean_share_per_task": [round(float(v), 4) for v in share.mean((0, 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [own_task_weights(r) for r in args.runs]
    for r in rows:
        print(f"{r['run']}: variant {r['variant']}, {r['tasks']} tasks: own weight {r['own_weight']:.3f}, own share "
              f"{r['own_share']:.3f} (uniform {r['uniform_share']:.3f}), largest other share {r['largest_other_share']:.3f}, "
              f"own task the largest in {100 * r['own_is_largest']:.0f} % of (prompt, layer); mean share per task "
              f"{r['mean_share_per_task']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
