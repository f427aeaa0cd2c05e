"""The synthetic tier's "learning shows" and "forgetting shows" gates, computed from result files.

- learning margin: for each concept i, ``R_method[i][i] - R_base[i][i]`` on ``ia``: the method's score right
  after learning concept i minus the base model's score for the same prompts with the plain class word
  (``base`` prompts with class words). Averaged over concepts, then mean ± std over seeds.
- forgetting: the ``ia`` forgetting summary over seeds, with its standard error; the gate asks for a mean at
  least 3 standard errors above zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cifc_bench.evaluation.metrics import from_json_matrix
from cifc_bench.reporting.runs import find_runs


def _mean_std_se(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else math.nan
    return {"mean": float(arr.mean()), "std": std, "se": std / math.sqrt(len(arr)) if len(arr) > 1 else math.nan,
            "n": len(arr)}


def gate_report(results_dir: Path, method: str = "finetune", protocol: str = "synth10", metric: str = "ia",
                include_dirty: bool = False) -> dict:
    from cifc_bench.core.protocol import load_protocol

    runs, _ = find_runs(results_dir, protocol, include_dirty=include_dirty,
                        protocol_version=load_protocol(protocol).version)
    by_method: dict[str, list] = {}
    for r in runs:
        by_method.setdefault(r.data["run_info"]["method"], []).append(r)
    if "base" not in by_method or method not in by_method:
        raise ValueError(f"need completed {protocol} runs of 'base' and {method!r} in {results_dir}; found "
                         f"{sorted(by_method)}")
    # base learns nothing, so its diagonal is the same in every seed: average it for the reference
    base_diag = np.mean([np.diag(from_json_matrix(r.data["matrices"][metric])) for r in by_method["base"]], axis=0)
    margins, forgetting = [], []
    for r in by_method[method]:
        R = from_json_matrix(r.data["matrices"][metric])
        margins.append(float(np.mean(np.diag(R) - base_diag)))
        forgetting.append(r.data["summary"][metric]["forgetting"])
    f = _mean_std_se(forgetting)
    return {
        "method": method,
        "learning_margin": _mean_std_se(margins),
        "forgetting": f,
        "forgetting_in_se": f["mean"] / f["se"] if f["se"] and not math.isnan(f["se"]) else math.nan,
        "base_forgetting": [r.data["summary"][metric]["forgetting"] for r in by_method["base"]],
    }
