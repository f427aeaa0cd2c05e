"""Measured wall time of the committed synth10 grid runs (issue 24's cost target), from each result.json's
run_info started/finished. Two runs of one configuration that started within a minute of each other ran side
by side (`sweep --jobs 2`, one thread each): their pair wall is the last finish minus the first start. A run
or pair whose wall is more than twice its runs' own training plus evaluation time was paused or resumed (its
tracks added later, a session's end): it is shown but not summed. Other work on the machine at the same time
(a test suite) is not seen here and makes a wall longer.

    python results/synth-check/grid_cost.py [results/synth10]
"""

import json
import sys
from datetime import datetime
from pathlib import Path


def runs(root: Path):
    for path in sorted(root.glob("*/*/result.json")):
        if path.parent.name.startswith("20"):  # world-v1 runs, left out of the leaderboard
            continue
        data = json.loads(path.read_text())
        info = data["run_info"]
        if data.get("status") != "completed" or not info.get("started") or not info.get("finished"):
            continue
        start, end = (datetime.fromisoformat(info[k]) for k in ("started", "finished"))
        work = sum((t.get("train_seconds") or 0) + (t.get("eval_seconds") or 0) for t in data.get("tasks") or [])
        yield {"run": f"{path.parent.parent.name}/{path.parent.name}",
               "start": start, "end": end, "wall": (end - start).total_seconds() / 60, "work": work / 60}


def main(root: Path) -> None:
    rows = list(runs(root))
    paired, pairs = set(), []
    for a in rows:
        for b in rows:
            if a["run"] < b["run"] and abs((a["start"] - b["start"]).total_seconds()) < 60:
                pairs.append((a, b, (max(a["end"], b["end"]) - min(a["start"], b["start"])).total_seconds() / 60))
                paired |= {a["run"], b["run"]}
    print("runs side by side (--jobs 2), pair wall in minutes:")
    clean_pairs = [w for a, b, w in pairs if w <= 2 * max(a["work"], b["work"])]
    for a, b, wall in pairs:
        print(f"  {a['run']:45s} + {b['run']:45s} {wall:6.1f}{' *' if wall > 2 * max(a['work'], b['work']) else ''}")
    print("runs alone, wall (train + eval) in minutes; * paused or resumed, not summed:")
    alone = [r for r in rows if r["run"] not in paired]
    for r in alone:
        print(f"  {r['run']:45s} {r['wall']:6.1f} ({r['work']:.1f}){' *' if r['wall'] > 2 * r['work'] else ''}")
    clean = [r["wall"] for r in alone if r["wall"] <= 2 * r["work"]]
    print(f"measured: {len(clean_pairs)} pairs, {sum(clean_pairs):.0f} min; {len(clean)} single runs, {sum(clean):.0f} min; "
          f"total {(sum(clean_pairs) + sum(clean)) / 60:.1f} h for {2 * len(clean_pairs) + len(clean)} of {len(rows)} runs; "
          f"not summed: {len(pairs) - len(clean_pairs)} pairs and {len(alone) - len(clean)} runs paused or resumed")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/synth10"))
