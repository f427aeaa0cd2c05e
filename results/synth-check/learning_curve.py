"""The learning curve that chooses synth10's training budget (issue 34, item 3).

``finetune`` learns one object concept from the base model, as the first task of a run would, and its snapshots
after each of ``--steps`` are scored by the exact identity oracle, attribute by attribute, on the concept's own
evaluation prompts and image seeds (the harness's). ``base`` (class words) is scored on the same images' seeds.
The rule the issue sets: take the cheapest budget whose mean identity_acc margin over ``base`` is at least 15
points with its 95 % interval's lower end at least +5.

The snapshots come from one training per (concept, lr, seed): the learning rate is constant and every random
stream is the task's own, so the state after 60 of 480 steps is the state of a 60-step run (the global random
state is saved and restored around each evaluation; ``--check-prefix`` trains the shortest budget alone and
compares the images byte for byte). Each cell is written to ``learning-curve/cells/`` as it finishes: run the
command again after a kill and it does only the missing cells. ``--summary`` writes the table from the cells::

    python results/synth-check/learning_curve.py                      # 5 concepts x 3 seeds x 2 rates
    python results/synth-check/learning_curve.py --summary
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("learning-curve")  # --out changes it
CONCEPTS = ("ball1", "kite1", "box1", "dome1", "ring1")


def setup(protocol: str = "synth10"):
    from cifc_bench.core.protocol import load_protocol

    spec = load_protocol(protocol)
    return spec, spec.bind(spec.data_root(None))


def score_images(images, requests, concept) -> list[dict[str, bool | None]]:
    """Per image, the oracle's attributes and details (None for a prompt that asks for a known style)."""
    from cifc_bench.synth import checks

    target = checks.concept_target(concept.generator)
    out = []
    for im, req in zip(images, requests, strict=True):
        prompt = concept.to_class_words(req.prompt)
        arr = np.asarray(im.convert("RGB"))
        check = checks.identity_check(arr, target, prompt)
        if check is None:
            out.append(None)
            continue
        ctx = checks.world.prompt_context(prompt)
        details = checks.object_details(arr, target, checks.world.POSITIONS.get(ctx.get("position", "")))
        out.append({**check, **details})
    return out


def generate(method, concept, settings):
    from cifc_bench.evaluation.eval_requests import concept_requests

    requests = [r for r, _ in concept_requests("synth10", concept, 20, 1)]
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    with torch.no_grad():
        images = method.generate(requests, settings)
    torch.set_rng_state(rng[0]), random.setstate(rng[1]), np.random.set_state(rng[2])
    return images, requests


def summarise_scores(per_image) -> dict:
    scored = [p for p in per_image if p is not None]
    attrs = sorted({k for p in scored for k in p})
    return {"identity_acc": float(np.mean([np.mean([p[a] for a in ("silhouette", "fill", "second_colour")])
                                           for p in scored])),
            **{a: float(np.mean([p[a] for p in scored])) for a in attrs},
            "per_image": [None if p is None else float(np.mean([p[a] for a in ("silhouette", "fill", "second_colour")]))
                          for p in per_image]}


def run_cell(spec, seq, name: str, lr: float, seed: int, steps: list[int]) -> dict:
    import cifc_bench.methods.finetune as finetune_module

    from cifc_bench.core.config import RunSpec
    from cifc_bench.core.registry import load_method
    from cifc_bench.core.seeding import train_seed
    from cifc_bench.diffusion.training import train_lora_and_tokens
    from cifc_bench.run.setup import build_method, fresh_bundle

    cfg = RunSpec(method="finetune", seed=seed, method_args={"lr": lr}).resolved(dict(spec.defaults), ("finetune",))
    bundle, _ = fresh_bundle(cfg)
    method = build_method(load_method("finetune"), bundle, cfg)
    concept = seq.concept(name)
    task = next(t for t in seq.tasks if t.concepts[0].name == name)
    settings = cfg.generation()
    out: dict = {"concept": name, "lr": lr, "seed": seed, "steps": {}}
    started = time.perf_counter()
    eval_seconds = 0.0

    def after_step(n: int) -> None:
        nonlocal eval_seconds
        if n not in steps:
            return
        t0 = time.perf_counter()
        bundle.unet.eval()
        images, requests = generate(method, concept, settings)
        bundle.unet.train()
        out["steps"][str(n)] = summarise_scores(score_images(images, requests, concept))
        out["steps"][str(n)]["png_sha"] = [hashlib.sha256(im.tobytes()).hexdigest()[:16] for im in images]
        eval_seconds += time.perf_counter() - t0
        print(f"  {name} lr {lr:g} s{seed} step {n}: identity_acc {out['steps'][str(n)]['identity_acc']:.3f}",
              flush=True)

    budget_seed = train_seed(seed, task.index)
    torch.manual_seed(budget_seed)
    original = finetune_module.train_lora_and_tokens
    finetune_module.train_lora_and_tokens = functools.partial(train_lora_and_tokens, after_step=after_step)
    try:
        method.learn_task(task, cfg.budget({"steps": max(steps), "lr_scale": 1.0}, budget_seed))
    finally:
        finetune_module.train_lora_and_tokens = original
    out["train_seconds"] = round(time.perf_counter() - started - eval_seconds, 1)
    out["eval_seconds"] = round(eval_seconds, 1)
    return out


def base_cell(spec, seq, names) -> dict:
    from cifc_bench.core.config import RunSpec
    from cifc_bench.core.registry import load_method
    from cifc_bench.run.setup import build_method, fresh_bundle

    cfg = RunSpec(method="base").resolved(dict(spec.defaults), ("base",))
    bundle, _ = fresh_bundle(cfg)
    method = build_method(load_method("base"), bundle, cfg)
    out = {}
    for name in names:
        images, requests = generate(method, seq.concept(name), cfg.generation())
        out[name] = summarise_scores(score_images(images, requests, seq.concept(name)))
    return out


def cell_path(name: str, lr: float, seed: int) -> Path:
    return OUT / "cells" / f"{name}-lr{lr:g}-s{seed}.json"


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def summary(names, lrs, seeds, steps) -> str:
    from cifc_bench.evaluation.stats import paired_difference

    base = json.loads((OUT / "cells" / "base.json").read_text())
    lines = ["| lr | steps | identity_acc | margin over base [95 %] | " + " | ".join(names) +
             " | silhouette | fill | second colour | layout | train s / cell |",
             "|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|---|"]
    rows = []
    base_units = np.array([[v for n in names for v in base[n]["per_image"] if v is not None]])
    for lr in lrs:
        for n_steps in steps:
            cells = {(n, s): json.loads(cell_path(n, lr, s).read_text()) for n in names for s in seeds
                     if cell_path(n, lr, s).exists()}
            if len(cells) < len(names) * len(seeds):
                continue
            table = np.array([[v for n in names for v in cells[(n, s)]["steps"][str(n_steps)]["per_image"]
                               if v is not None] for s in seeds])
            diff = paired_difference(table, base_units)
            per_concept = [np.mean([cells[(n, s)]["steps"][str(n_steps)]["identity_acc"] for s in seeds])
                           - base[n]["identity_acc"] for n in names]
            attr = {a: np.mean([cells[(n, s)]["steps"][str(n_steps)][a] for n in names for s in seeds])
                    for a in ("silhouette", "fill", "second_colour", "layout")}
            cost = np.mean([c["train_seconds"] for c in cells.values()]) * n_steps / max(steps)
            rows.append({"lr": lr, "steps": n_steps, "mean": float(table.mean()), "margin": diff.mean,
                         "low": diff.low, "high": diff.high, "per_concept": dict(zip(names, per_concept, strict=True))})
            lines.append(f"| {lr:g} | {n_steps} | {table.mean():.3f} | {100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, "
                         f"{100 * diff.high:+.1f}] | " + " | ".join(f"{100 * m:+.0f}" for m in per_concept) +
                         " | " + " | ".join(f"{attr[a]:.2f}" for a in attr) + f" | {cost:.0f} |")
    base_row = {a: np.mean([base[n][a] for n in names]) for a in ("identity_acc", "silhouette", "fill", "second_colour",
                                                                   "layout")}
    lines.append(f"| base | – | {base_row['identity_acc']:.3f} | – | " + " | ".join("–" for _ in names) + " | " +
                 " | ".join(f"{base_row[a]:.2f}" for a in ("silhouette", "fill", "second_colour", "layout")) + " | – |")
    ok = [r for r in rows if r["margin"] >= 0.15 and r["low"] >= 0.05]
    cheapest = min(ok, key=lambda r: (r["steps"], r["lr"])) if ok else None
    choice = (f"Cheapest budget meeting the rule (margin >= +15, lower end >= +5): {cheapest['steps']} steps at lr "
              f"{cheapest['lr']:g}" if cheapest else "No budget measured meets the rule (margin >= +15, lower end >= +5).")
    write(OUT / "summary.json", {"rows": rows, "base": base_row, "choice": cheapest})
    return "\n".join(lines) + "\n\n" + choice + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concepts", nargs="+", default=list(CONCEPTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3])
    p.add_argument("--steps", nargs="+", type=int, default=[60, 120, 240, 480])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summary", action="store_true", help="only write the table from the finished cells")
    p.add_argument("--check-prefix", action="store_true",
                   help="train the shortest budget alone for the first cell and compare its images with the snapshot")
    args = p.parse_args(argv)
    globals()["OUT"] = args.out
    torch.set_num_threads(1)
    spec, seq = setup()
    if not args.summary:
        if not (OUT / "cells" / "base.json").exists():
            write(OUT / "cells" / "base.json", base_cell(spec, seq, args.concepts))
        for lr in args.lrs:
            for seed in args.seeds:
                for name in args.concepts:
                    path = cell_path(name, lr, seed)
                    if path.exists():
                        continue
                    print(f"cell {name} lr {lr:g} seed {seed}", flush=True)
                    write(path, run_cell(spec, seq, name, lr, seed, sorted(args.steps)))
        if args.check_prefix:
            name, lr, seed = args.concepts[0], args.lrs[0], args.seeds[0]
            alone = run_cell(spec, seq, name, lr, seed, [min(args.steps)])["steps"][str(min(args.steps))]
            snap = json.loads(cell_path(name, lr, seed).read_text())["steps"][str(min(args.steps))]
            same = alone["png_sha"] == snap["png_sha"]
            print(f"prefix check ({name}, lr {lr:g}, seed {seed}, {min(args.steps)} steps alone vs snapshot): "
                  f"images {'identical' if same else 'DIFFER'}")
            if not same:
                return 1
    text = summary(args.concepts, args.lrs, args.seeds, sorted(args.steps))
    (OUT / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
