"""Issue 34's first target on the committed 3.0 runs: finetune's identity_acc learning margin over base, paired by
image (the protocol fixes each image's seed), with a 95 % interval from a crossed bootstrap over images and the
three finetune seeds; and the margin per concept.

    python results/synth-check/finetune_margin.py [results]
"""

import json
import sys
from pathlib import Path

import numpy as np


def diagonal(path: Path):
    d = json.loads(path.read_text())
    cells = d["per_image"]["identity_acc"]
    return {i: cells[f"{i},{i}"] for i in range(len(d["concepts"]))}, d["concepts"]


def main(root: Path) -> None:
    base, names = diagonal(root / "synth10" / "base" / "s0" / "result.json")
    seeds = sorted((root / "synth10" / "finetune").glob("s*/result.json"))
    runs = [diagonal(p)[0] for p in seeds]
    rows = [(i, [r[i][k] for r in runs], b) for i in range(len(names)) for k, b in enumerate(base[i])
            if b is not None and all(r[i][k] is not None for r in runs)]
    concept = np.array([r[0] for r in rows])
    diff = np.array([r[1] for r in rows]) - np.array([r[2] for r in rows])[:, None]
    rng = np.random.default_rng(0)
    boots = [diff[rng.integers(0, len(rows), len(rows))][:, rng.integers(0, len(runs), len(runs))].mean()
             for _ in range(4000)]
    low, high = np.percentile(boots, [2.5, 97.5])
    print(f"finetune - base, identity_acc learning (x100), {len(runs)} seeds x {len(rows)} images: "
          f"{100 * diff.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
    for i, name in enumerate(names):
        print(f"  {name:7s} {100 * diff[concept == i].mean():+6.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
