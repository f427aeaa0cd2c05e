"""Measured wall time of the committed synth10 grid runs (issue 24's cost target): the runs the leaderboard
counts (`cifc_bench.reporting.runs.find_runs`), each from its run_info started/finished. Two runs that started
within a minute of each other ran side by side (`sweep --jobs 2`, one thread each): their pair wall is the last
finish minus the first start. A run or pair whose wall is more than twice its runs' own training plus
evaluation time was paused or resumed (its tracks added later, a session's end): it is shown but not summed.
Other work on the machine at the same time (a test suite) is not seen here and makes a wall longer.

    python results/synth-check/grid_cost.py [results]
"""

import sys
from pathlib import Path

from cifc_bench.reporting.runs import find_runs, run_span


def runs(root: Path):
    from cifc_bench.core.protocol import load_protocol

    for run in find_runs(root, "synth10", protocol_version=load_protocol("synth10").version)[0]:
        span = run_span(run)
        if span is None:
            continue
        work = sum((t.get("train_seconds") or 0) + (t.get("eval_seconds") or 0) for t in run.data.get("tasks") or [])
        yield {"run": f"{run.path.parent.parent.name}/{run.path.parent.name}", "start": span[0], "end": span[1],
               "wall": (span[1] - span[0]).total_seconds() / 60, "work": work / 60}


def main(root: Path) -> None:
    rows = list(runs(root))
    pairs = [(a, b) for a in rows for b in rows
             if a["run"] < b["run"] and abs((a["start"] - b["start"]).total_seconds()) < 60]
    paired = {r["run"] for pair in pairs for r in pair}
    measured = [{"runs": [a["run"], b["run"]], "work": max(a["work"], b["work"]),
                 "wall": (max(a["end"], b["end"]) - min(a["start"], b["start"])).total_seconds() / 60}
                for a, b in pairs]
    measured += [{"runs": [r["run"]], "work": r["work"], "wall": r["wall"]} for r in rows if r["run"] not in paired]
    for m in measured:
        m["paused"] = m["wall"] > 2 * m["work"]
    print("wall minutes (train + eval of the longer run); + side by side (--jobs 2); * paused or resumed, not summed:")
    for m in measured:
        print(f"  {' + '.join(m['runs']):80s} {m['wall']:6.1f} ({m['work']:.1f}){' *' if m['paused'] else ''}")
    clean = [m for m in measured if not m["paused"]]
    n_pairs = sum(len(m["runs"]) == 2 for m in clean)
    print(f"measured: {n_pairs} pairs, {sum(m['wall'] for m in clean if len(m['runs']) == 2):.0f} min; "
          f"{len(clean) - n_pairs} single runs, {sum(m['wall'] for m in clean if len(m['runs']) == 1):.0f} min; "
          f"total {sum(m['wall'] for m in clean) / 60:.1f} h for {sum(len(m['runs']) for m in clean)} of {len(rows)} "
          f"runs; not summed: {len(measured) - len(clean)} paused or resumed")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
