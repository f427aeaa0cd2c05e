"""Measure candidate settings of the synthetic world's identity oracle (issue 34, item 2) before choosing one.

``identity_acc`` now counts what the 32-pixel base model can draw: the silhouette, the fill and the second
colour's coverage, the second colour credited only with the right fill. This script scores, for each candidate
colour tolerance (RGB distance to the nearest named colour) and coverage (share of a perfect render's pixel
count), the images the issue's oracle targets name:

- perfect renders of every personal object, with pixel grain of σ = 10, 20 and 30 grey levels (the sampler's
  measured grain is an RMS of 19-21 per channel from the nearest palette colour);
- a generic instance of the class: another fill and a random pattern (what an ideal ``base`` draws);
- the same-class sibling's perfect render (ball1/ball2, box1/box2);
- with the fill read as "the most common object colour but the second" or by its coverage alone;
- the base model's own images of the evaluation prompts: with class words (what ``base`` is scored on), and with
  the concept described in the world's caption words (how far words alone get);

and writes the table to ``identity-oracle.json`` beside this file. One thread; about 2 minutes on this machine::

    python results/synth-check/identity_oracle.py
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifc_bench.core.protocol import load_protocol
from cifc_bench.synth import checks, world
from cifc_bench.synth.protocol import PersonalObject, personal_concepts

OUT = Path(__file__).with_name("identity-oracle.json")
TOLERANCES = (70.0, 90.0)
COVERAGES = (0.4, 0.5)
GRAINS = (10.0, 20.0, 30.0)
N_RENDERS = 24  # perfect / generic / sibling images per concept and row


def contexts(concept: PersonalObject, n: int, seed: int):
    """Scenes of ``concept`` in the evaluation contexts: random position, size and (contrasting) background."""
    rng = np.random.default_rng([seed, sum(map(ord, concept.name))])
    backgrounds = [b for b in world.BACKGROUNDS if not world.low_contrast(concept.scene.fill, b)]
    return [world.replace(concept.scene, position=str(rng.choice(list(world.POSITIONS))),
                          background=str(rng.choice(backgrounds)), size=str(rng.choice(list(world.SIZES))))
            for _ in range(n)]


def prompt_for(scene: world.Scene, class_word: str) -> str:
    return f"a {scene.size} {class_word} on the {scene.position}, on a {scene.background} background"


def rendered_rows(objects: list[PersonalObject]) -> dict[str, list[tuple[np.ndarray, world.Scene, str]]]:
    """(image, target, prompt) triples of the hand-made rows."""
    rows: dict[str, list] = {f"perfect, grain {g:g}": [] for g in GRAINS}
    rows["generic wrong-fill instance"], rows["same-class sibling"] = [], []
    by_class: dict[str, list[PersonalObject]] = {}
    for c in objects:
        by_class.setdefault(c.class_word, []).append(c)
    for c in objects:
        rng = np.random.default_rng([7, sum(map(ord, c.name))])
        for k, scene in enumerate(contexts(c, N_RENDERS, 0)):
            prompt = prompt_for(scene, c.class_word)
            for g in GRAINS:
                rows[f"perfect, grain {g:g}"].append((world.grain(world.render(scene, k), rng, g), c.scene, prompt))
            fills = [f for f in world.COLORS if f != c.scene.fill and not world.low_contrast(f, scene.background)]
            fill = str(rng.choice(fills))
            pattern = str(rng.choice(world.PATTERNS))
            second = str(rng.choice([x for x in world.COLORS if x != fill]))
            generic = world.replace(scene, fill=fill, pattern=pattern, pattern_color=None if pattern == "solid" else second)
            rows["generic wrong-fill instance"].append((world.grain(world.render(generic, k), rng, 20.0), c.scene, prompt))
            for sib in by_class[c.class_word]:
                if sib is not c:
                    s = world.replace(sib.scene, position=scene.position, background=scene.background, size=scene.size)
                    rows["same-class sibling"].append((world.grain(world.render(s, k), rng, 20.0), c.scene, prompt))
    return rows


def base_rows(objects: list[PersonalObject]) -> dict[str, list[tuple[np.ndarray, world.Scene, str]]]:
    """The base model's images of every object's evaluation prompts, asked with class words and with words."""
    from cifc_bench.api import GenerationRequest
    from cifc_bench.core.config import RunSpec
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.sampling import generate_requests
    from cifc_bench.evaluation.eval_requests import concept_requests
    from cifc_bench.synth.protocol import ensure_data

    spec = load_protocol("synth10")
    seq = spec.bind(ensure_data(None))
    settings = RunSpec(method="base").resolved(dict(spec.defaults)).generation()
    bundle = load_bundle("synth", "cpu")
    rows: dict[str, list] = {"base, class words": [], "base, caption words": []}
    for c in objects:
        concept = seq.concept(c.name)
        pairs = concept_requests(seq.name, concept, 20, 1)
        reqs = [r for r, _ in pairs]
        s = c.scene
        described = f"{s.fill} {c.class_word} with {s.pattern_color} {s.pattern}"
        for label, words in (("base, class words", c.class_word), ("base, caption words", described)):
            prompts = [r.prompt.replace(concept.eval_replacement, words) for r in reqs]
            images = generate_requests(bundle, [GenerationRequest(prompt=p, seed=r.seed) for p, r in zip(prompts, reqs, strict=True)],
                                       settings, prompts=prompts)
            rows[label] += [(np.asarray(im.convert("RGB")), c.scene, r.prompt.replace(concept.eval_replacement,
                             c.class_word)) for im, r in zip(images, reqs, strict=True)]
    return rows


def coverage_only(labels, scene, template, expected, expected_second) -> bool:
    """The candidate fill rule without the "most common object colour" clause."""
    return int((checks.color_mask(labels, scene.fill) & template).sum()) >= checks.COVERAGE * expected


FILL_RULES = {"most common": checks._fill_shown, "coverage only": coverage_only}


def score(rows, tolerance: float, coverage: float, fill_rule: str) -> dict[str, dict[str, float]]:
    checks.COLOR_TOLERANCE, checks.COVERAGE, checks._fill_shown = tolerance, coverage, FILL_RULES[fill_rule]
    out = {}
    for label, items in rows.items():
        per = [checks.identity_check(img, target, prompt) for img, target, prompt in items]
        per = [p for p in per if p is not None]
        out[label] = {"n": len(per), "identity_acc": round(float(np.mean([np.mean(list(p.values())) for p in per])), 3),
                      **{a: round(float(np.mean([p[a] for p in per])), 3) for a in checks.OBJECT_ATTRIBUTES}}
    return out


def main() -> int:
    torch.set_num_threads(1)
    start = time.time()
    objects = [c for c in personal_concepts() if isinstance(c, PersonalObject)]
    rows = {**rendered_rows(objects), **base_rows(objects)}
    small = {c.name: checks._expected_counts(c.scene, (16, 16), "small") for c in objects}
    tables = {f"fill {f}, tolerance {t:g}, coverage {v:g}": score(rows, t, v, f)
              for f, t, v in itertools.product(FILL_RULES, TOLERANCES, COVERAGES)}
    result = {"concepts": {c.name: [c.scene.shape, c.scene.fill, c.scene.pattern, c.scene.pattern_color] for c in objects},
              "expected_pixels_small_fill_second": small, "tables": tables, "seconds": round(time.time() - start, 1)}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    for name, table in tables.items():
        print(f"\n## {name}\n\n| images | n | silhouette | fill | second colour | identity_acc |\n|---|---|---|---|---|---|")
        for label, r in table.items():
            print(f"| {label} | {r['n']} | {r['silhouette']:.2f} | {r['fill']:.2f} | {r['second_colour']:.2f} | "
                  f"{r['identity_acc']:.3f} |")
    print(f"\nexpected (fill, second colour) pixels of a small render: {small}\n{result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
