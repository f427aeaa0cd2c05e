"""Concept-neglect rate: presence on hand-made crops, reproducible thresholds, and the neglect matrix of a run."""

import json

import numpy as np
import pytest
from PIL import Image

from cifc_bench.api import Box
from cifc_bench.evaluation import neglect as ng


def test_rates_on_hand_made_presence():
    sims = np.array([[0.9, 0.8], [0.9, 0.1], [0.2, 0.1], [0.7, 0.75]])
    scores = ng.score_presence(sims, [0.5, 0.7])
    assert scores.present.tolist() == [[True, True], [True, False], [False, False], [True, True]]
    assert scores.cnr == pytest.approx(0.5)  # images 1 and 2 miss at least one concept
    assert scores.miss_rate.tolist() == pytest.approx([0.25, 0.5])
    assert scores.min_sim == pytest.approx(np.mean([0.8, 0.1, 0.1, 0.7]))
    with pytest.raises(ValueError, match="2 concepts per image but 3 thresholds"):
        ng.score_presence(sims, [0.5, 0.5, 0.5])


def test_threshold_is_the_95th_percentile_and_needs_data():
    assert ng.presence_threshold(np.arange(101) / 100) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="no calibration images"):
        ng.presence_threshold([])


def test_crop_box_takes_the_normalised_region():
    img = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    crop = ng.crop_box(img, Box(0.25, 0.5, 0.75, 1.0))
    assert crop.size == (16, 16)
    assert np.array_equal(np.asarray(crop), np.asarray(img)[8:24, 16:32])


def test_style_concepts_are_scored_on_the_whole_image_and_objects_on_their_box_at_native_scale():
    px = np.full((16, 16, 3), 200, dtype=np.uint8)
    px[2:6, 2:6] = (255, 0, 0)  # an object inside the first box
    px[10:14, 10:14] = (0, 0, 255)  # another outside it
    img = Image.fromarray(px)
    regions = ng.concept_regions([img], (Box(0, 0, 0.5, 0.5), Box(0, 0, 1, 1)), ["object", "style"])
    isolated = np.asarray(regions[0][0])
    assert regions[0][0].size == (16, 16) and regions[1][0] is img  # same size and place as the references
    assert np.array_equal(isolated[:8, :8], px[:8, :8])  # the box is kept as it is
    assert (isolated[8:] == 200).all() and (isolated[:, 8:] == 200).all()  # the rest: the box edge's colour


def test_calibration_prompt_names_every_concept_by_its_class_word(tiny_protocol):
    from cifc_bench.core.protocol import load_protocol

    seq = load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))
    m = seq.multi_concept_prompts[0]
    concepts = [seq.concept(c) for c in m.concepts]
    text = ng.class_word_prompt(m.prompt, concepts)
    assert all(c.token_string not in text and c.class_word in text for c in concepts)


def test_thresholds_are_reproducible_from_their_seed_and_cached(tmp_path, tiny_protocol, monkeypatch):
    from cifc_bench.api import GenerationSettings
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer

    spec = load_protocol(str(tiny_protocol))
    seq = spec.bind(tiny_protocol.with_name("tiny-data"))
    bundle, scorer = load_bundle("tiny-random"), load_scorer("tiny-random")
    settings = GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=3.0, batch_size=8)
    first = ng.calibrate_thresholds(bundle, scorer, seq, settings, 6, "tiny-random", tmp_path / "a")
    second = ng.calibrate_thresholds(bundle, scorer, seq, settings, 6, "tiny-random", tmp_path / "b")
    assert first["thresholds"] == second["thresholds"]
    assert [set(t) for t in first["thresholds"]] == [{"thing0", "thing1"}]  # per prompt, per concept
    other = ng.calibrate_thresholds(bundle, scorer, seq, settings, 7, "tiny-random", None)
    assert other["key"] != first["key"]  # the number of images is part of the key
    import torch

    weight = next(bundle.unet.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():  # re-trained weights under the same model name: a new key, never stale thresholds
        weight.add_(1.0)
    assert ng.calibrate_thresholds(bundle, scorer, seq, settings, 6, "tiny-random", None)["key"] != first["key"]
    with torch.no_grad():
        weight.copy_(saved)

    import cifc_bench.diffusion.sampling

    def no_generation(*args, **kwargs):
        raise AssertionError("calibration images were generated again although the thresholds are cached")

    monkeypatch.setattr(cifc_bench.diffusion.sampling, "generate_batched", no_generation)
    again = ng.calibrate_thresholds(bundle, scorer, seq, settings, 6, "tiny-random", tmp_path / "a")
    assert again == first
    assert json.loads((tmp_path / "a" / f"{first['key']}.json").read_text())["thresholds"] == first["thresholds"]


def test_run_writes_a_neglect_matrix_and_ia_dino(tmp_path, tiny_protocol):
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    cfg = tiny_run_config(tiny_protocol, dino="tiny-random", calibration_images=4, multi_images_per_prompt=3)
    result = run_benchmark(cfg, tmp_path / "run")
    neglect = result["neglect"]
    # the one prompt asks for thing0 and thing1: measured from task 2 on, never before
    assert [row[0] is None for row in neglect["matrices"]["cnr"]] == [True, False, False]
    assert all(0.0 <= row[0] <= 1.0 for row in neglect["matrices"]["cnr"][1:])
    assert neglect["miss_rate"][0] == {"thing0": None, "thing1": None}
    assert set(neglect["miss_rate"][2]) == {"thing0", "thing1"}
    scores = json.loads((tmp_path / "run" / "images" / "after_task_02" / "_multi" / "scores.json").read_text())
    assert len(scores["images"]) == 3 and all(len(s["present"]) == 2 for s in scores["images"])
    present = np.array([s["present"] for s in scores["images"]])
    assert neglect["matrices"]["cnr"][2][0] == pytest.approx(float((~present.all(axis=1)).mean()))
    assert set(result["summary"]["cnr"]) == {"final", "first", "change"}
    R = result["matrices"]["ia_dino"]
    assert all((R[j][i] is None) == (i > j) for j in range(3) for i in range(3))
    assert all(-1.0 <= R[j][i] <= 1.0 for j in range(3) for i in range(j + 1))


def _with_presence(tiny_protocol, name: str, checks: list[str]):
    """A copy of the tiny protocol (same data) whose defaults name these presence checks."""
    import yaml

    spec = yaml.safe_load(tiny_protocol.read_text())
    spec["defaults"]["presence"] = checks
    protocol = tiny_protocol.with_name(f"{name}.yaml")
    protocol.write_text(yaml.safe_dump(spec, sort_keys=False))
    protocol.with_name(f"{name}-data").symlink_to(tiny_protocol.with_name("tiny-data"))
    return protocol


def test_a_presence_check_plugin_gives_its_own_neglect_matrix(tmp_path, tiny_protocol):
    from PIL import Image

    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import bright_box_present, tiny_run_config

    protocol = _with_presence(tiny_protocol, "tiny-presence", ["cifc_bench.testing:bright_box_present"])
    result = run_benchmark(tiny_run_config(protocol, calibration_images=2, multi_images_per_prompt=3), tmp_path / "run")
    rows = result["neglect"]["matrices"]["cifc_bench.testing:bright_box_present"]
    assert rows[0][0] is None and all(0.0 <= r[0] <= 1.0 for r in rows[1:])
    folder = tmp_path / "run" / "images" / "after_task_02" / "_multi"
    scores = json.loads((folder / "scores.json").read_text())
    flags = [s["present_cifc_bench.testing:bright_box_present"] for s in scores["images"]]
    boxes = [Box(*b) for b in result["neglect"]["prompts"][0]["boxes"]]
    expected = [[bright_box_present(Image.open(folder / s["file"]), None, b) for b in boxes] for s in scores["images"]]
    assert flags == expected  # per image, the check's own answer, in concept order
    assert rows[2][0] == pytest.approx(np.mean([not all(f) for f in flags]))
    assert set(result["summary"]["cifc_bench.testing:bright_box_present"]) == {"final", "first", "change"}


def test_an_unknown_presence_check_is_the_protocols_error(tmp_path, tiny_protocol):
    from cifc_bench.core.config import ConfigError
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    protocol = _with_presence(tiny_protocol, "tiny-bad-presence", ["no_such_check"])
    with pytest.raises(ConfigError, match="defaults.presence names presence check 'no_such_check'.*registered"):
        run_benchmark(tiny_run_config(protocol), tmp_path / "run")
