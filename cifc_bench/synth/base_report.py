"""Gates of the synthetic tier, measured by the suite (``cifc-bench synth check``).

Base model:

- ``context_acc``: on held-out prompts (combinations pretraining never showed), the fraction of prompted
  attributes (background, position, style) that the generated image satisfies, judged by the exact checks.
- ``class_acc``: images generated from a plain class word ("a ball"), classified by the exact silhouette check
  (:func:`cifc_bench.synth.checks.detect_shape`); ``class_acc_scorer`` is the scorer's zero-shot reading of
  the same images, and ``class_acc_renders`` the scorer's reading of the world's own renders of what a class
  word asks for (about the most the scorer can reach).
- ``two_object_fill_binding``: on prompts "a F1 S1 on the left and a F2 S2 on the right", the share of images
  in which both objects show their prompted fill (and each side separately): the attribute neglect that
  context-controllable methods should fix.

Oracles and neglect (``oracles``): whether ``cnr_exact`` calls perfect renders of the boxed prompts present
(with sampling-like grain), and base-model class-word images and same-class siblings absent; the
``identity_acc`` of perfect renders; the scorer's ``cnr`` of perfect renders under thresholds calibrated
as a run calibrates them; and ``scorer_box_separation``, whether the scorer's box similarity can tell the
concept from ideal generic instances of its class at all (:func:`box_separation`).
"""

from __future__ import annotations

import numpy as np

from cifc_bench.api import GenerationSettings
from cifc_bench.synth import world
from cifc_bench.synth.pretrain_data import held_out


def context_accuracy(images, prompts) -> float:
    """Attributes satisfied over attributes asked, pooled over images (NaN when no prompt asks for any)."""
    ok = asked = 0
    for image, prompt in zip(images, prompts, strict=True):
        o, a = world.check_context(np.asarray(image.convert("RGB")), prompt)
        ok, asked = ok + o, asked + a
    return ok / asked if asked else float("nan")


def held_out_prompts(n: int, seed: int = 7) -> list[str]:
    """Prompts whose (shape, fill, position, background) combination pretraining never showed."""
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    while len(prompts) < n:
        scene = world.random_scene(rng)
        if held_out(scene):
            prompts.append(world.caption(scene))
    return prompts


def class_predictions(scorer, images) -> np.ndarray:
    """Index into :data:`world.SHAPES` of the class word each image matches best (zero-shot)."""
    texts = scorer.encode_texts([f"a {s}" for s in world.SHAPES])
    return np.argmax(scorer.encode_images(images) @ texts.T, axis=1)


def class_word_renders(images_per_class: int, seed: int = 7) -> tuple[list, np.ndarray]:
    """Renders of what "a ball" etc. describe: one object of each class, plain, in random contexts; and the
    class indices."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(world.SHAPES)), images_per_class)
    scenes = [world.replace(world.random_scene(rng), shape=world.SHAPES[k], style="plain") for k in truth]
    return [Image.fromarray(world.render(s, int(rng.integers(1 << 31)))) for s in scenes], truth


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, dict[str, float]]:
    return float(np.mean(predicted == truth)), {s: float(np.mean(predicted[truth == k] == k))
                                                for k, s in enumerate(world.SHAPES)}


def _settings(settings: GenerationSettings | None) -> GenerationSettings:
    return settings or GenerationSettings(resolution=world.SIZE, num_inference_steps=12, guidance_scale=3.0,
                                          batch_size=50)


def two_object_prompts(n: int, seed: int = 7) -> list[tuple[str, str, str, str, str]]:
    """(prompt, left fill, left shape, right fill, right shape): solid objects of two different fills."""
    rng = np.random.default_rng([seed, 2])
    out = []
    while len(out) < n:
        f1, f2 = (str(c) for c in rng.choice(list(world.COLORS), size=2, replace=False))
        s1, s2 = (str(rng.choice(world.SHAPES)) for _ in range(2))
        bg = str(rng.choice(list(world.BACKGROUNDS)))
        if world.low_contrast(f1, bg) or world.low_contrast(f2, bg):
            continue
        out.append((f"a {f1} {s1} on the left and a {f2} {s2} on the right, on a {bg} background", f1, s1, f2, s2))
    return out


def fill_shown(img: np.ndarray, fill: str, shape: str, box) -> bool:
    """A solid object's fill covers at least half of a small render's pixels inside ``box``."""
    from cifc_bench.synth import checks

    return checks.present(img, world.Scene(shape=shape, fill=fill), box)


LEFT, RIGHT = (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)


def base_model_report(bundle, scorer, n_prompts: int = 200, images_per_class: int = 40, seed: int = 7,
                      settings: GenerationSettings | None = None, n_pairs: int = 100) -> dict:
    from cifc_bench.core.seeding import derive_seed
    from cifc_bench.diffusion.sampling import generate_batched
    from cifc_bench.synth import checks

    settings = _settings(settings)
    prompts = held_out_prompts(n_prompts, seed)
    seeds = [derive_seed("synth-check", seed, k) for k in range(len(prompts))]
    images = generate_batched(bundle, prompts, seeds, settings)
    per_attr: dict[str, list[bool]] = {}
    for image, prompt in zip(images, prompts, strict=True):
        px = np.asarray(image)
        for key, want in world.prompt_context(prompt).items():
            got = {"background": world.detect_background, "position": world.detect_position,
                   "style": world.detect_style}[key](px)
            per_attr.setdefault(key, []).append(got == want)
    class_prompts = [f"a {s}" for s in world.SHAPES for _ in range(images_per_class)]
    class_seeds = [derive_seed("synth-class", seed, k) for k in range(len(class_prompts))]
    class_images = generate_batched(bundle, class_prompts, class_seeds, settings)
    truth = np.repeat(np.arange(len(world.SHAPES)), images_per_class)
    shapes = [checks.detect_shape(np.asarray(im)) for im in class_images]
    silhouette = np.array([world.SHAPES.index(s) if s else -1 for s in shapes])
    class_acc, by_class = _accuracy(silhouette, truth)
    scorer_acc, scorer_by_class = _accuracy(class_predictions(scorer, class_images), truth)
    renders, render_truth = class_word_renders(images_per_class, seed)
    renders_acc, renders_by_class = _accuracy(class_predictions(scorer, renders), render_truth)
    pairs = two_object_prompts(n_pairs, seed)
    pair_seeds = [derive_seed("synth-pairs", seed, k) for k in range(len(pairs))]
    pair_images = generate_batched(bundle, [p[0] for p in pairs], pair_seeds, settings)
    left = [fill_shown(np.asarray(im), p[1], p[2], LEFT) for im, p in zip(pair_images, pairs, strict=True)]
    right = [fill_shown(np.asarray(im), p[3], p[4], RIGHT) for im, p in zip(pair_images, pairs, strict=True)]
    return {
        "context_acc": context_accuracy(images, prompts),
        "context_acc_by_attribute": {k: float(np.mean(v)) for k, v in per_attr.items()},
        "class_acc": class_acc,
        "class_acc_by_class": by_class,
        "class_acc_scorer": scorer_acc,
        "class_acc_scorer_by_class": scorer_by_class,
        "class_acc_renders": renders_acc,
        "class_acc_renders_by_class": renders_by_class,
        "two_object_fill_binding": {"both": float(np.mean(np.logical_and(left, right))), "left": float(np.mean(left)),
                                    "right": float(np.mean(right)), "n": len(pairs)},
        "n_prompts": len(prompts),
        "n_class_images": len(class_prompts),
        "images": images,
        "class_images": class_images,
        "pair_images": pair_images,
    }


def perfect_boxed_renders(sequence, per_prompt: int, seed: int = 7) -> list[list]:
    """Per multi-concept prompt, renders of exactly what it asks (each concept small in its box's half, on the
    prompt's background) with sampling-like grain."""
    from PIL import Image

    from cifc_bench.synth.checks import concept_target

    rng = np.random.default_rng([seed, 3])
    out = []
    for m in sequence.multi_concept_prompts:
        background = world.prompt_context(m.prompt).get("background", "gray")
        scenes = []
        for c, box in zip(m.concepts, m.boxes, strict=True):
            y0, x0, y1, x1 = box.as_tuple()
            position = "left" if x1 <= 0.55 else "right" if x0 >= 0.45 else "top" if y1 <= 0.55 else "bottom"
            target = concept_target(sequence.concept(c).generator)
            scenes.append(world.replace(target, size="small", position=position, background=background))
        out.append([Image.fromarray(world.grain(world.render_many(scenes, int(rng.integers(1 << 31))), rng))
                    for _ in range(per_prompt)])
    return out


def oracle_report(bundle, scorer, sequence, per_prompt: int = 40, calibration_images: int = 50, seed: int = 7,
                  settings: GenerationSettings | None = None) -> dict:
    """Soundness of the exact oracles, and the scorer's cnr of perfect renders (see the module docstring)."""
    from cifc_bench.core.images import list_images, load_rgb
    from cifc_bench.core.seeding import derive_seed
    from cifc_bench.diffusion.sampling import generate_batched
    from cifc_bench.evaluation import neglect as ng
    from cifc_bench.synth import checks

    settings = _settings(settings)
    perfect = perfect_boxed_renders(sequence, per_prompt, seed)
    objects = [c for c in sequence.concepts if c.kind == "object"]
    targets = {c.name: checks.concept_target(c.generator) for c in sequence.concepts}
    present_perfect, present_classword, present_sibling = [], [], []
    calibration = ng.calibrate_thresholds(bundle, scorer, sequence, settings, calibration_images, "synth", None)
    scorer_neglected, separation = [], {}
    protos = {c.name: ng.prototype(scorer.encode_images([load_rgb(p) for p in list_images(c.image_dir)]))
              for c in sequence.concepts}
    for q, (m, images) in enumerate(zip(sequence.multi_concept_prompts, perfect, strict=True)):
        concepts = [sequence.concept(c) for c in m.concepts]
        for im in images:
            px = np.asarray(im)
            present_perfect += [checks.present(px, targets[c], box) for c, box in zip(m.concepts, m.boxes, strict=True)]
        prompt = ng.class_word_prompt(m.prompt, concepts)
        generic = generate_batched(bundle, [prompt] * per_prompt,
                                   [derive_seed("synth-oracle", seed, q, k) for k in range(per_prompt)], settings)
        for im in generic:
            px = np.asarray(im)
            present_classword += [checks.present(px, targets[c], box) for c, box in zip(m.concepts, m.boxes, strict=True)]
        sims = ng.neglect_similarities(scorer, images, m.boxes, [c.kind for c in concepts], [protos[c] for c in m.concepts])
        scorer_neglected.append(ng.score_presence(sims, ng.prompt_thresholds(calibration, q, m.concepts)).cnr)
        for k, c in enumerate(concepts):
            if c.kind == "object":
                generic = generic_box_renders(targets[c.name], m.boxes[k], m.prompt, 4 * per_prompt, seed + q)
                scores = ng.similarity(scorer.encode_images(generic), protos[c.name])
                separation[f"q{q}:{c.name}"] = box_separation(sims[:, k], scores)
    rng = np.random.default_rng([seed, 4])
    for c in objects:  # every other object of the same class, drawn where this one is asked for
        for sib in (s for s in objects if s.class_word == c.class_word and s.name != c.name):
            for k in range(per_prompt):
                side = ("left", LEFT) if k % 2 == 0 else ("right", RIGHT)
                scene = world.replace(targets[sib.name], size="small", position=side[0])
                px = world.grain(world.render(scene, int(rng.integers(1 << 31))), rng)
                present_sibling.append(checks.present(px, targets[c.name], side[1]))
    identity = []
    for c in sequence.concepts:
        rendered = []
        for k in range(per_prompt // 2):
            if c.kind == "object":
                scene = world.replace(targets[c.name], position=list(world.POSITIONS)[k % 5],
                                      size=list(world.SIZES)[k % 2])
                prompt = f"a {c.class_word} on the {scene.position}"
            else:
                scene = world.replace(world.random_scene(rng), style="plain", personal_style=targets[c.name])
                prompt = f"a picture of a {scene.shape}"
            rendered.append((world.grain(world.render(scene, int(rng.integers(1 << 31))), rng), prompt))
        identity.append(checks.identity_acc([r[0] for r in rendered], [r[1] for r in rendered], targets[c.name]))
    return {
        "cnr_exact_present_perfect": float(np.mean(present_perfect)), "n_perfect": len(present_perfect),
        "cnr_exact_present_classword": float(np.mean(present_classword)), "n_classword": len(present_classword),
        "cnr_exact_present_sibling": float(np.mean(present_sibling)) if present_sibling else None,
        "n_sibling": len(present_sibling),
        "identity_acc_perfect": float(np.mean(identity)),
        "identity_acc_perfect_min": float(np.min(identity)),
        "scorer_cnr_perfect": float(np.mean(scorer_neglected)),
        "scorer_cnr_perfect_by_prompt": scorer_neglected,
        "calibration_thresholds": calibration["thresholds"],
        "scorer_box_separation": separation,
        "scorer_box_generic_admitted_median": float(np.median([v["generic_admitted"] for v in separation.values()])),
    }


def generic_box_renders(target: world.Scene, box, prompt: str, n: int, seed: int) -> list:
    """Perfect renders of *generic* instances of the concept's class in its box (any fill, pattern and pattern
    colour, the prompt's background, small, with grain), isolated like the scorer's cnr isolates them: what an
    ideal base model draws for the class-word prompt."""
    from PIL import Image

    from cifc_bench.evaluation import neglect as ng

    rng = np.random.default_rng([seed, 6])
    background = world.prompt_context(prompt).get("background", "gray")
    y0, x0, y1, x1 = box.as_tuple()
    position = "left" if x1 <= 0.55 else "right" if x0 >= 0.45 else "top" if y1 <= 0.55 else "bottom"
    out = []
    while len(out) < n:
        scene = world.replace(world.random_scene(rng), shape=target.shape, size="small", position=position,
                              background=background, style="plain")
        if world.low_contrast(scene.fill, background):
            continue
        img = Image.fromarray(world.grain(world.render(scene, int(rng.integers(1 << 31))), rng))
        out.append(ng.isolate_box(img, box))
    return out


def box_separation(perfect: np.ndarray, generic: np.ndarray) -> dict[str, float]:
    """How well the scorer's box similarity separates the concept from generic instances of its class:
    ``perfect_present_at_p95``, the share of perfect renders at or above the generic 95th percentile (the
    calibration rule, with an ideal base model); ``generic_admitted``, the share of generic instances that a
    threshold low enough to call 95 % of perfect renders present would call present too (0 when the scorer
    separates them, 0.95 when it cannot tell them apart at all)."""
    perfect, generic = np.asarray(perfect, dtype=np.float64), np.asarray(generic, dtype=np.float64)
    return {"perfect_present_at_p95": float(np.mean(perfect >= np.percentile(generic, 95))),
            "generic_admitted": float(np.mean(generic >= np.percentile(perfect, 5))),
            "perfect_mean": float(perfect.mean()), "generic_mean": float(generic.mean())}


def _blur(px: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) array, edges repeated: about what survives high noise."""
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(px, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    rows = sum(k * padded[i : i + px.shape[0]] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + px.shape[1]] for i, k in enumerate(kernel))


def world_report(n: int = 400, seed: int = 7, sigma: float = 2.0) -> dict:
    """How much the world rewards drawing shape: mean squared pixel difference (per channel, [-1, 1] units)
    between renders that differ only in the class, or only in the fill, same seed (same jitter and texture),
    raw and after a σ-pixel blur, per size; and the smallest blurred difference of any two classes."""
    rng = np.random.default_rng([seed, 5])
    out: dict = {}
    for size in world.SIZES:
        diffs: dict[str, list[float]] = {"class": [], "fill": [], "class_blur": [], "fill_blur": []}
        pairs: dict[tuple[str, str], list[float]] = {}
        for k in range(n):
            scene = world.replace(world.random_scene(rng), size=size, style="plain")
            other_shape = str(rng.choice([s for s in world.SHAPES if s != scene.shape]))
            other_fill = str(rng.choice([c for c in world.COLORS if c not in (scene.fill, scene.pattern_color)
                                         and not world.low_contrast(c, scene.background)]))
            base = world.render(scene, k).astype(np.float32) / 127.5 - 1
            for kind, changed in (("class", world.replace(scene, shape=other_shape)),
                                  ("fill", world.replace(scene, fill=other_fill))):
                img = world.render(changed, k).astype(np.float32) / 127.5 - 1
                diffs[kind].append(float(((img - base) ** 2).mean()))
                blurred = float(((_blur(img, sigma) - _blur(base, sigma)) ** 2).mean())
                diffs[f"{kind}_blur"].append(blurred)
                if kind == "class":
                    pairs.setdefault(tuple(sorted((scene.shape, other_shape))), []).append(blurred)
        mean = {key: float(np.mean(v)) for key, v in diffs.items()}
        smallest = min(pairs, key=lambda pair: np.mean(pairs[pair]))
        out[size] = {**mean, "class_over_fill": mean["class"] / mean["fill"],
                     "class_over_fill_blur": mean["class_blur"] / mean["fill_blur"],
                     "closest_classes_blur": {"pair": list(smallest), "difference": float(np.mean(pairs[smallest]))}}
    return {"sigma": sigma, "n": n, **out}
