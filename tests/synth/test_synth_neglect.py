"""The neglect rate's presence rule with the synthetic world's trained scorer (the plugin's own test)."""

import numpy as np
import pytest
from PIL import Image

from cifc_bench import neglect as ng
from cifc_bench.api import Box


def _synth_scene_images(scenes, seed0=0):
    from cifc_bench.synth import world

    return [Image.fromarray(world.render(s, seed=seed0 + k)) for k, s in enumerate(scenes)]


def test_reference_crop_is_present_and_blank_crop_is_missing():
    """With the synthetic world's trained scorer: a concept's references define its prototype, generic balls
    its threshold. A crop identical to a reference counts as present; an empty crop of background as missing."""
    from cifc_bench.scoring import load_scorer
    from cifc_bench.synth import world

    scorer = load_scorer("synth")
    personal = world.Scene("ball", "orange", "zigzag", "blue", mark=("white", "top-right"))
    refs = _synth_scene_images([world.replace(personal, position=p) for p in ("center", "left", "right", "top")])
    proto = ng.prototype(scorer.encode_images(refs))
    rng = np.random.default_rng(0)
    generic = [world.replace(world.random_scene(rng), shape="ball", style="plain") for _ in range(60)]
    threshold = ng.presence_threshold(ng.similarity(scorer.encode_images(_synth_scene_images(generic, 100)), proto))

    # a two-concept image whose left half is a reference and whose right half is plain background
    left = np.asarray(refs[0])
    blank = np.broadcast_to(np.array(world.BACKGROUNDS["gray"], dtype=np.uint8), left.shape)
    both = Image.fromarray(np.concatenate([left, blank], axis=1))
    boxes = (Box(0.0, 0.0, 1.0, 0.5), Box(0.0, 0.5, 1.0, 1.0))
    sims = ng.neglect_similarities(scorer, [both], boxes, ["object", "object"], [proto, proto])
    scores = ng.score_presence(sims, [threshold, threshold])
    assert sims[0, 0] == pytest.approx(float(ng.similarity(scorer.encode_images([refs[0]]), proto)[0]), abs=1e-5)
    assert scores.present.tolist() == [[True, False]]
    assert scores.cnr == 1.0


def test_box_separation_tells_a_separating_scorer_from_a_blind_one():
    """The diagnostic behind the scorer-cnr gate: 0 generic instances admitted when the similarity separates the
    concept from its class, about 95 % when it cannot tell them apart."""
    import numpy as np

    from cifc_bench.synth.base_report import box_separation

    rng = np.random.default_rng(0)
    generic = rng.normal(0.5, 0.05, 2000)
    apart = box_separation(rng.normal(0.9, 0.01, 400), generic)
    assert apart["generic_admitted"] == 0.0 and apart["perfect_present_at_p95"] == 1.0
    blind = box_separation(rng.normal(0.5, 0.05, 4000), generic)
    assert 0.9 <= blind["generic_admitted"] <= 0.99 and blind["perfect_present_at_p95"] <= 0.1
