"""The effect of CIDM's region synthesis (``ccs``) on neglect, paired image by image.

``ccs`` changes only how CIDM samples a multi-concept request (``ccs=false``: the global prompt alone, the boxes
unused), never what it learns, so the ablation's final row needs no second training: the committed run's state
after its last task generates the final multi-concept images again, once with ``ccs`` on and once off, with the
same seeds, scored by the harness's own neglect evaluation (``evaluate_neglect``). The ``ccs=true`` pass must
reproduce the run's committed final neglect exactly: that checks the pairing. Prints ``cnr_drawn`` and
``cnr_exact`` of both passes and the paired difference (off − on) with its 95 % interval over images
(``cifc_bench.evaluation.stats.paired_difference``).

    python results/synth-check/ccs_effect.py results/synth10/cidm/s0 > results/synth-check/ccs_effect.txt
"""

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifc_bench.core.config import RunSpec
from cifc_bench.evaluation.evaluate import evaluate_neglect
from cifc_bench.evaluation.stats import paired_difference
from cifc_bench.run.rundir import method_after, new_neglect, state_path
from cifc_bench.run.setup import load_context

CHECKS = ("cnr_drawn", "cnr_exact")


def final_neglect(run: Path, ccs: bool) -> tuple[dict, float]:
    """The run's final neglect part, generated again from its last state with ``ccs``; and the seconds it took."""
    result = json.loads((run / "result.json").read_text())
    last = len(result["concepts"]) - 1
    stored = RunSpec.from_dict(result["run_info"]["config"])
    config = dataclasses.replace(stored, method_args={**stored.method_args, "ccs": ccs}, eval_workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        state_path(scratch, last).parent.mkdir(parents=True)
        shutil.copy(state_path(run, last), state_path(scratch, last))
        ctx = load_context(config, scratch, calibration=result["neglect"]["calibration"], with_method=False)
        ctx = dataclasses.replace(ctx, method=method_after(ctx, last))
        neglect = new_neglect(ctx)
        start = time.perf_counter()
        evaluate_neglect(ctx, last, neglect, {})
        return neglect, time.perf_counter() - start


def per_image(neglect: dict, check: str) -> np.ndarray:
    """Each final image neglected (1) or not (0), prompt by prompt: the leaderboard's interval units."""
    rows = neglect["per_image"][check]
    return np.array([v for q in sorted(rows, key=int) for v in rows[q]], dtype=float)


def main(run_dir: str) -> None:
    run = Path(run_dir)
    committed = json.loads((run / "result.json").read_text())["neglect"]
    on, on_seconds = final_neglect(run, ccs=True)
    off, off_seconds = final_neglect(run, ccs=False)
    print(f"{run}: final multi-concept images, {len(per_image(on, CHECKS[0]))} per pass "
          f"(ccs on {on_seconds:.0f} s, off {off_seconds:.0f} s, one thread)")
    for check in CHECKS:
        same = np.array_equal(per_image(on, check), per_image(committed, check))
        a, b = per_image(off, check), per_image(on, check)
        d = paired_difference(a, b)
        print(f"  {check}: ccs on {100 * b.mean():.1f} (the run's committed images: "
              f"{100 * per_image(committed, check).mean():.1f}, {'identical' if same else 'DIFFERENT'} per image), "
              f"ccs off {100 * a.mean():.1f}; off - on {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")


if __name__ == "__main__":
    main(sys.argv[1])
