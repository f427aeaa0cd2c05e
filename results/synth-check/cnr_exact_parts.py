"""Why `cnr_exact` stays at 1.0 on synth10 3.0: each part of the exact presence check (the concept's fill, and
its second colour, each covering half their pixel count in a small perfect render, inside the box), counted on a
run's final multi-concept images; and the neglect rate the fill alone would give (a concept present when its
fill is). Reads the images a run saved (they are not committed: run it where the grid ran).

    python results/synth-check/cnr_exact_parts.py RUN_DIR [RUN_DIR ...]
"""

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cifc_bench.core.protocol import load_protocol
from cifc_bench.synth.checks import concept_target, presence_parts


def parts(run: Path):
    result = json.loads((run / "result.json").read_text())
    last = len(result["concepts"]) - 1
    folder = run / "images" / f"after_task_{last:02d}" / "_multi"
    generators = {c["name"]: c.get("generator") for c in load_protocol("synth10").raw["concepts"]}
    prompts = result["neglect"]["prompts"]
    counts, neglected = defaultdict(Counter), Counter()
    for image in json.loads((folder / "scores.json").read_text())["images"]:
        p = prompts[image["prompt"]]
        pixels = np.asarray(Image.open(folder / image["file"]).convert("RGB"))
        fills = []
        for k, concept in enumerate(p["concepts"]):
            shown = presence_parts(pixels, concept_target(generators[concept]), tuple(p["boxes"][k]) if p["boxes"] else None)
            counts[concept].update({part: int(v) for part, v in shown.items()} | {"images": 1})
            fills.append(shown.get("fill", all(shown.values())))
        neglected.update({"images": 1, "exact": int(not all(image["present_cnr_exact"])), "fill only": int(not all(fills))})
    return counts, neglected


def main(runs) -> None:
    for run in map(Path, runs):
        counts, neglected = parts(run)
        print(f"{run}: neglect over {neglected['images']} final images: cnr_exact {neglected['exact'] / neglected['images']:.2f}, "
              f"with the fill alone {neglected['fill only'] / neglected['images']:.2f}")
        for concept, c in sorted(counts.items()):
            print(f"  {concept:7s} " + ", ".join(f"{part} {c[part]}/{c['images']}" for part in c if part != "images"))


if __name__ == "__main__":
    main(sys.argv[1:])
