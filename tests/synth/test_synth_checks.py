"""The exact oracles of the synthetic world on hand-made images: perfect renders pass, and a swapped concept, a
missing object, a wrong box, a sibling of the same class or a plain class-word object fail."""

import numpy as np
import pytest

from cifc_bench.synth import checks, world
from cifc_bench.synth.protocol import PersonalObject, PersonalStyle, personal_concepts

CONCEPTS = personal_concepts()
OBJECTS = {c.name: c for c in CONCEPTS if isinstance(c, PersonalObject)}
STYLES = [c.style for c in CONCEPTS if isinstance(c, PersonalStyle)]
LEFT, RIGHT = (0.2, 0.05, 0.8, 0.5), (0.2, 0.5, 0.8, 0.95)


def grain(pixels, seed, sigma=10.0):
    """The pixel noise that sampling leaves (σ ≈ 10 grey levels)."""
    noise = np.random.default_rng(seed).normal(0, sigma, pixels.shape)
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8)


def contexts(concept, n):
    rng = np.random.default_rng(sum(map(ord, concept.name)))
    backgrounds = [b for b in world.BACKGROUNDS if not world.low_contrast(concept.scene.fill, b)]
    for k in range(n):
        yield world.replace(concept.scene, position=str(rng.choice(list(world.POSITIONS))),
                            background=str(rng.choice(backgrounds)), size=str(rng.choice(list(world.SIZES)))), k


@pytest.mark.parametrize("sigma", [10.0, 20.0])
def test_identity_of_perfect_grainy_renders_is_complete(sigma):
    """Perfect renders score >= 0.95 at the grain of the oracle's design (σ = 10) and of the sampler (σ = 20),
    and every concept >= 0.9: at σ = 20 a green pattern on grass can lose an image to the grass's blades."""
    per_concept = {}
    for name, concept in sorted(OBJECTS.items()):
        scores = []
        for scene, k in contexts(concept, 12):
            img = grain(world.render(scene, seed=k), k, sigma)
            check = checks.identity_check(img, concept.scene, f"a {concept.class_word} on the {scene.position}")
            assert set(check) == set(checks.OBJECT_ATTRIBUTES)
            scores.append(np.mean(list(check.values())))
        per_concept[name] = np.mean(scores)
    assert np.mean(list(per_concept.values())) >= 0.95 and min(per_concept.values()) >= 0.9, per_concept


def _base_class_word_mean() -> float:
    """The base model's class-word identity_acc under this oracle, measured by
    results/synth-check/identity_oracle.py (its committed output)."""
    import json
    from pathlib import Path

    out = json.loads((Path(__file__).parents[2] / "results/synth-check/identity-oracle.json").read_text())
    table = out["tables"][f"fill most common, tolerance {checks.COLOR_TOLERANCE:g}, coverage {checks.COVERAGE:g}"]
    return table["base, class words"]["identity_acc"]


def test_a_generic_wrong_fill_instance_scores_no_more_than_the_base_model():
    """An object of the class with any other fill and any pattern earns its silhouette, and nothing for a second
    colour that happens to be the concept's: no more than what `base` earns with class words."""
    scores = []
    for name, concept in sorted(OBJECTS.items()):
        rng = np.random.default_rng([3, sum(map(ord, name))])
        for scene, k in contexts(concept, 24):
            fill = str(rng.choice([f for f in world.COLORS if f != concept.scene.fill
                                   and not world.low_contrast(f, scene.background)]))
            pattern = str(rng.choice(world.PATTERNS))
            second = None if pattern == "solid" else str(rng.choice([c for c in world.COLORS if c != fill]))
            img = grain(world.render(world.replace(scene, fill=fill, pattern=pattern, pattern_color=second), k), k, 20)
            scores.append(np.mean(list(checks.identity_check(img, concept.scene, "a thing").values())))
    assert np.mean(scores) <= _base_class_word_mean(), np.mean(scores)
    assert np.mean(scores) >= 0.3  # the silhouette still counts: the oracle is not blind to the class


def test_identity_fails_for_a_sibling_a_swapped_concept_and_an_empty_picture():
    ball1, ball2, kite1 = OBJECTS["ball1"], OBJECTS["ball2"], OBJECTS["kite1"]
    prompt = "a ball on the left"
    for a, b in (("ball1", "ball2"), ("ball2", "ball1"), ("box1", "box2"), ("box2", "box1")):
        for k in range(6):
            sibling = grain(world.render(world.replace(OBJECTS[b].scene, position="left"), seed=k), k, 20)
            check = checks.identity_check(sibling, OBJECTS[a].scene, prompt)
            assert check == {"silhouette": True, "fill": True, "second_colour": False}  # a sibling's render: 2/3
            assert np.mean(list(check.values())) <= 0.67
    sibling = world.render(world.replace(ball2.scene, position="left"), seed=1)
    swapped = world.render(world.replace(kite1.scene, position="left"), seed=1)
    assert sum(checks.identity_check(swapped, ball1.scene, prompt).values()) <= 1
    empty = world.render_many([world.replace(ball1.scene, position="left")], seed=1)
    empty[:] = world.BACKGROUNDS["gray"]
    assert not any(checks.identity_check(empty, ball1.scene, prompt).values())
    assert checks.identity_acc([sibling, swapped, empty], [prompt] * 3, ball1.scene) < 0.35


def test_a_second_colour_counts_only_with_the_right_fill():
    ball1 = OBJECTS["ball1"].scene  # orange, blue zigzag
    swapped = world.replace(ball1, fill="blue", pattern_color="orange", position="left")  # the colours exchanged
    check = checks.identity_check(world.render(swapped, seed=0), ball1, "a ball on the left")
    assert check == {"silhouette": True, "fill": False, "second_colour": False}


def test_details_finer_than_the_grain_are_reported_apart():
    ball1 = OBJECTS["ball1"].scene
    img = world.render(world.replace(ball1, position="left"), seed=0)
    assert checks.object_details(img, ball1, world.POSITIONS["left"]) == {"layout": True}
    other_layout = world.render(world.replace(ball1, pattern="stripes", position="left"), seed=0)
    assert checks.object_details(other_layout, ball1, world.POSITIONS["left"]) == {"layout": False}
    assert checks.identity_check(other_layout, ball1, "a ball on the left") == dict.fromkeys(checks.OBJECT_ATTRIBUTES,
                                                                                             True)
    marked = world.replace(ball1, mark=("white", "top-right"), position="left")
    assert checks.object_details(world.render(marked, seed=0), marked, world.POSITIONS["left"])["mark"]


def test_identity_skips_prompts_that_ask_for_a_known_style():
    ball1 = OBJECTS["ball1"]
    img = world.render(ball1.scene)
    assert checks.identity_check(img, ball1.scene, "a mosaic of a ball") is None
    assert np.isnan(checks.identity_acc([img], ["a sketch of a ball"], ball1.scene))


@pytest.mark.parametrize("style", STYLES)
def test_style_identity_shows_its_own_palette_and_texture_only(style):
    rng = np.random.default_rng(3)
    for k in range(10):
        scene = world.replace(world.random_scene(rng), style="plain")
        own = grain(world.render(world.replace(scene, personal_style=style), seed=k), k)
        assert all(checks.style_identity(own, style).values())
        assert not checks.style_identity(grain(world.render(scene, seed=k), k), style)["texture"]
        for other in set(STYLES) - {style}:
            assert not all(checks.style_identity(world.render(world.replace(scene, personal_style=other), seed=k),
                                                 style).values())


def test_silhouette_names_every_class_of_grainy_renders_and_nothing_on_an_empty_picture():
    rng = np.random.default_rng(5)
    for k in range(100):
        scene = world.replace(world.random_scene(rng), style="plain")
        assert checks.detect_shape(grain(world.render(scene, seed=k), k)) == scene.shape
    blank = np.full((32, 32, 3), world.BACKGROUNDS["white"], dtype=np.uint8)
    assert checks.detect_shape(blank) is None


def _pair(a, b, background, seed):
    scenes = [world.replace(a, size="small", position="left", background=background),
              world.replace(b, size="small", position="right", background=background)]
    return grain(world.render_many(scenes, seed=seed), seed)


@pytest.mark.parametrize("left,right,background", [("ball1", "box1", "gray"), ("kite1", "ring1", "white"),
                                                   ("dome1", "ball2", "black"), ("box2", "ball1", "brown")])
def test_presence_in_boxes(left, right, background):
    a, b = OBJECTS[left].scene, OBJECTS[right].scene
    for k in range(10):
        img = _pair(a, b, background, k)
        assert checks.present(img, a, LEFT) and checks.present(img, b, RIGHT)  # perfect renders: present
        assert not checks.present(img, a, RIGHT) and not checks.present(img, b, LEFT)  # wrong box / swapped
        alone = grain(world.render_many([world.replace(b, size="small", position="right", background=background)],
                                        seed=k), k)
        assert not checks.present(alone, a, LEFT)  # a missing object


def test_presence_rejects_same_class_siblings_and_generic_class_word_objects():
    rng = np.random.default_rng(11)
    for k in range(10):
        img = _pair(OBJECTS["ball2"].scene, OBJECTS["box2"].scene, "gray", k)
        assert not checks.present(img, OBJECTS["ball1"].scene, LEFT)
        assert not checks.present(img, OBJECTS["box1"].scene, RIGHT)
    generic = 0
    for k in range(60):
        scene = world.replace(world.random_scene(rng), shape="ball", style="plain")
        other = world.replace(world.random_scene(rng), shape="box", style="plain")
        img = _pair(scene, other, "gray", k)
        generic += checks.present(img, OBJECTS["ball1"].scene, LEFT)
    assert generic <= 3  # a random ball has ball1's fill and pattern colour about 1 time in 56


def test_metric_and_presence_plugins_read_the_protocols_generator_field(tmp_path):
    from PIL import Image

    from cifc_bench.api import ConceptImages
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.synth.plugin import cnr_exact, identity_acc
    from cifc_bench.synth.protocol import ensure_data

    seq = load_protocol("synth10").bind(ensure_data(tmp_path / "data"))
    ball1 = next(c for c in seq.concepts if c.name == "ball1")
    prompts = ("a ball on the left", "a ball on the right")
    good = [Image.fromarray(world.render(world.replace(OBJECTS["ball1"].scene, position=p.split()[-1]), seed=2))
            for p in prompts]
    bad = [Image.fromarray(world.render(world.replace(OBJECTS["ball2"].scene, position=p.split()[-1]), seed=2))
           for p in prompts]
    score = lambda images: identity_acc(ConceptImages(ball1, tuple(images), prompts, None, None, None))  # noqa: E731
    assert score(good) == 1.0 and score(bad) < 1.0
    box1 = next(c for c in seq.concepts if c.name == "box1")
    pair = Image.fromarray(_pair(OBJECTS["ball1"].scene, OBJECTS["box1"].scene, "gray", 0))
    assert cnr_exact(pair, ball1, LEFT) and cnr_exact(pair, box1, RIGHT) and not cnr_exact(pair, box1, LEFT)
