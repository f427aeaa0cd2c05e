"""Gates of the synthetic tier's base model, measured by the suite (``cifc-bench synth check``).

- ``context_acc``: on held-out prompts (combinations pretraining never showed), the fraction of prompted
  attributes (background, position, style) that the generated image satisfies, judged by the exact checks.
- ``class_acc``: images generated from a plain class word ("a ball") are classified zero-shot by the scorer
  among all class words; the fraction classified as the prompted class.
- ``class_acc_renders``: the same classification of the world's own renders of what a class word asks for (one
  object of that class, plain style, any other attribute: a caption always names a mosaic or sketch). It is
  about the most ``class_acc`` can reach with this scorer, so a generator that cannot draw shape can be told
  apart from a scorer that cannot see it.
"""

from __future__ import annotations

import numpy as np

from cifc_bench.api import GenerationSettings
from cifc_bench.synth import world
from cifc_bench.synth.pretrain import held_out


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


def base_model_report(bundle, scorer, n_prompts: int = 200, images_per_class: int = 40, seed: int = 7,
                      settings: GenerationSettings | None = None) -> dict:
    from cifc_bench.sampling import generate_batched
    from cifc_bench.seeding import derive_seed

    settings = settings or GenerationSettings(resolution=world.SIZE, num_inference_steps=12, guidance_scale=3.0,
                                              batch_size=50)
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
    class_acc, by_class = _accuracy(class_predictions(scorer, class_images),
                                    np.repeat(np.arange(len(world.SHAPES)), images_per_class))
    renders, render_truth = class_word_renders(images_per_class, seed)
    renders_acc, renders_by_class = _accuracy(class_predictions(scorer, renders), render_truth)
    return {
        "context_acc": context_accuracy(images, prompts),
        "context_acc_by_attribute": {k: float(np.mean(v)) for k, v in per_attr.items()},
        "class_acc": class_acc,
        "class_acc_by_class": by_class,
        "class_acc_renders": renders_acc,
        "class_acc_renders_by_class": renders_by_class,
        "n_prompts": len(prompts),
        "n_class_images": len(class_prompts),
        "images": images,
        "class_images": class_images,
    }
