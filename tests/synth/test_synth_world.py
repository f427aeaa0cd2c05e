"""The procedural world: determinism, the exact checks on hand-made images, and the synth10 data."""

import numpy as np
import pytest

from cifc_bench.synth import world
from cifc_bench.synth.world import Scene


def test_rendering_and_generation_are_deterministic():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for k in range(20):
        a, b = world.random_scene(rng_a), world.random_scene(rng_b)
        assert a == b
        assert np.array_equal(world.render(a, seed=k), world.render(b, seed=k))
        assert world.caption(a) == world.caption(b)


def test_pretraining_scenes_never_show_a_personal_identity():
    from cifc_bench.synth.protocol import object_identities

    exclude = object_identities()
    assert len(exclude) == 7
    rng = np.random.default_rng(0)
    assert all(world.identity(world.random_scene(rng, exclude)) not in exclude for _ in range(3000))


def _canvas(colour, size=32):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


def test_background_check_on_hand_made_images():
    img = _canvas(world.BACKGROUNDS["brown"])
    img[10:20, 10:20] = (255, 0, 0)  # an object in the middle does not fool the border
    assert world.detect_background(img) == "brown"
    assert world.detect_background(_canvas((250, 250, 250))) == "white"


@pytest.mark.parametrize("position, box", [
    ("left", (slice(12, 20), slice(6, 14))), ("right", (slice(12, 20), slice(18, 26))),
    ("top", (slice(6, 14), slice(12, 20))), ("bottom", (slice(18, 26), slice(12, 20))),
    ("center", (slice(12, 20), slice(12, 20))),
])
def test_position_check_on_hand_made_images(position, box):
    img = _canvas(world.BACKGROUNDS["gray"])
    img[box] = (250, 220, 30)
    assert world.detect_position(img) == position


def test_position_check_sees_nothing_on_an_empty_image():
    assert world.detect_position(_canvas((125, 125, 125))) is None


def test_style_checks_on_hand_made_images():
    rng = np.random.default_rng(0)
    plain = rng.integers(0, 255, size=(32, 32, 3)).astype(np.uint8)
    mosaic = np.repeat(np.repeat(rng.integers(0, 255, size=(8, 8, 3)), 4, axis=0), 4, axis=1).astype(np.uint8)
    grey = np.repeat(rng.integers(0, 255, size=(32, 32, 1)), 3, axis=2).astype(np.uint8)
    assert world.detect_style(plain) == "plain"
    assert world.detect_style(mosaic) == "mosaic"
    assert world.detect_style(grey) == "sketch"


def test_style_check_survives_sampling_grain():
    """Samples carry pixel noise (about σ = 10 grey levels on the synthetic base model): the style check must
    still name the rendered style, and must never call a plain picture stylised."""
    rng = np.random.default_rng(3)
    scenes = [world.replace(world.random_scene(rng), style=s) for s in world.STYLES for _ in range(100)]
    for sigma in (0, 10):
        found = [world.detect_style(np.clip(world.render(sc, seed=k) + rng.normal(0, sigma, (32, 32, 3)), 0, 255))
                 for k, sc in enumerate(scenes)]
        truth = [sc.style for sc in scenes]
        assert np.mean([f == t for f, t in zip(found, truth, strict=True)]) >= 0.97, sigma
        assert not any(f != "plain" for f, t in zip(found, truth, strict=True) if t == "plain"), sigma


def test_prompt_context_parsing():
    assert world.prompt_context("a mosaic of a red ball on the left, on a grass background") == {
        "style": "mosaic", "position": "left", "background": "grass"}
    assert world.prompt_context("a sketch of a ball on the top, on a gray background") == {
        "style": "sketch", "position": "top"}  # a sketch draws no background colour
    assert world.prompt_context("a ball on the left and a box on the right, on a white background") == {
        "background": "white"}
    assert world.check_context(world.render(Scene("ball", "red", position="top", background="water")),
                               "a ball on the top, on a water background") == (2, 2)
    assert world.check_context(world.render(Scene("ball", "red", position="top", background="water")),
                               "a ball on the left, on a black background") == (0, 2)


def test_exact_checks_agree_with_ground_truth_on_rendered_scenes():
    rng = np.random.default_rng(1)
    ok = asked = 0
    for k in range(400):
        scene = world.random_scene(rng)
        o, a = world.check_context(world.render(scene, seed=k), world.caption(scene))
        ok, asked = ok + o, asked + a
    assert ok / asked > 0.97


def test_synth10_data_matches_its_published_checksums(tmp_path):
    from cifc_bench.core.data import verify_checksums
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.synth.protocol import ensure_data

    spec = load_protocol("synth10")
    root = ensure_data(tmp_path / "synth10")
    assert verify_checksums(root, spec.checksum_file) == []
    seq = spec.bind(root)
    assert len(seq.tasks) == 10 and [c.kind for c in seq.concepts].count("style") == 3
    assert {c.class_word for c in seq.concepts if c.kind == "object"} == {"ball", "kite", "box", "dome", "ring"}
    assert all(4 <= len(c.image_paths()) <= 7 for c in seq.concepts)
    assert all(len(c.eval_prompts) == 20 for c in seq.concepts)
    assert len(seq.multi_concept_prompts) == 10 and all(m.boxes and len(m.region_prompts) == len(m.boxes)
                                                        for m in seq.multi_concept_prompts)


@pytest.mark.parametrize("scene", [Scene(shape="ball", fill="red", pattern="stripes"),  # a pattern needs its colour
                                   Scene(shape="ball", fill="white")])  # a background name, not an object colour
def test_rendering_names_a_missing_or_unknown_colour(scene):
    with pytest.raises(ValueError, match="must be colours of the world: \\['red'"):
        world.render(scene)
