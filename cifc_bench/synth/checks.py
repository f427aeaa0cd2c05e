"""Gates of the synthetic tier, measured by the suite (``cifc-bench synth check``).

- ``context_acc``: on held-out prompts (combinations pretraining never showed), the fraction of prompted
  attributes (background, position, style) that the generated image satisfies, judged by the exact checks.
- ``class_acc``: images generated from a plain class word ("a ball") are classified zero-shot by the scorer
  among all class words; the fraction classified as the prompted class.
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
    feats = scorer.encode_images(class_images)
    texts = scorer.encode_texts([f"a {s}" for s in world.SHAPES])
    predicted = np.argmax(feats @ texts.T, axis=1)
    truth = np.repeat(np.arange(len(world.SHAPES)), images_per_class)
    return {
        "context_acc": context_accuracy(images, prompts),
        "context_acc_by_attribute": {k: float(np.mean(v)) for k, v in per_attr.items()},
        "class_acc": float(np.mean(predicted == truth)),
        "class_acc_by_class": {s: float(np.mean(predicted[truth == k] == k)) for k, s in enumerate(world.SHAPES)},
        "n_prompts": len(prompts),
        "n_class_images": len(class_prompts),
        "images": images,
        "class_images": class_images,
    }
