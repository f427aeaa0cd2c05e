"""How far one run's final method state is from another's: does a switch change what is learned?

For two run directories with their final states (``state/after_task_NN.safetensors``, the last one), the
largest absolute difference over every tensor, and the largest and median relative difference
‖a − b‖ / ‖a‖ per tensor; and, from their ``result.json``, each matrix metric's largest cell difference and
the two final-row means.

    python results/synth-check/compare_states.py REFERENCE_RUN OTHER_RUN... [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def final_state(run_dir: Path) -> Path:
    states = sorted((run_dir / "state").glob("after_task_*.safetensors"))
    if not states:
        raise SystemExit(f"{run_dir} keeps no state (state/after_task_*.safetensors): run it with its states kept")
    return states[-1]


def compare(reference: Path, other: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    a, b = load_file(final_state(reference)), load_file(final_state(other))
    if set(a) != set(b):
        raise SystemExit(f"{reference} and {other} hold different tensors: not the same method and concepts")
    diffs = {k: (a[k].float() - b[k].float(), a[k].float()) for k in a if a[k].is_floating_point()}
    rel = torch.tensor([float(d.norm() / ref.norm().clamp(min=1e-12)) for d, ref in diffs.values()])
    return {"reference": str(reference), "other": str(other), "tensors": len(diffs),
            "max_abs_diff": max(float(d.abs().max()) for d, _ in diffs.values()),
            "max_rel_diff": float(rel.max()), "median_rel_diff": float(rel.median()),
            "tensors_changed": int((rel > 0).sum()), "matrices": compare_matrices(reference, other)}


def compare_matrices(reference: Path, other: Path) -> dict:
    import numpy as np

    a, b = (json.loads((d / "result.json").read_text())["matrices"] for d in (reference, other))
    out = {}
    for metric in sorted(set(a) & set(b)):
        A, B = (np.array([[np.nan if v is None else v for v in row] for row in m[metric]], dtype=float) for m in (a, b))
        if A.shape == B.shape and not np.isnan(A).all():
            out[metric] = {"max_cell_diff": float(np.nanmax(np.abs(A - B))),
                           "final_mean": [float(np.nanmean(A[-1])), float(np.nanmean(B[-1]))]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("others", nargs="+", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [compare(args.reference, o) for o in args.others]
    for r in rows:
        print(f"{r['other']}: {r['tensors_changed']} of {r['tensors']} tensors changed, max |diff| "
              f"{r['max_abs_diff']:.4g}, relative diff max {r['max_rel_diff']:.3g}, median {r['median_rel_diff']:.3g}")
        for metric, m in r["matrices"].items():
            print(f"  {metric}: largest cell difference {m['max_cell_diff']:.4g}, final mean {m['final_mean'][0]:.4f} "
                  f"against {m['final_mean'][1]:.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
