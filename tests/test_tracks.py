"""Image-conditioned tracks: custom style transfer and custom image editing, measured after the run's tasks."""

import json
import math

import numpy as np
import pytest
import yaml
from PIL import Image

from cifc_bench.api import Box, TrackImages
from cifc_bench.evaluation.tracks import (
    PSNR_IDENTICAL,
    box_ia,
    content_sim,
    outside_exact,
    outside_psnr,
    outside_ssim,
)

CENTRE = Box(0.25, 0.25, 0.75, 0.75)


def _sample(outputs, inputs, box=CENTRE, **features):
    return TrackImages(concept=None, images=tuple(outputs), prompts=(), features=features.get("features"),
                       reference_features=features.get("reference"), text_features=None, track="editing",
                       inputs=tuple(inputs), input_features=features.get("input_features"), box=box,
                       box_features=features.get("box_features"))


def _noise(seed, size=32):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_outside_metrics_pass_an_untouched_outside_and_fail_a_changed_one():
    inputs = [_noise(1), _noise(2)]
    edited = []
    for im in inputs:  # only the box [8, 24) x [8, 24) changes
        px = np.asarray(im).copy()
        px[8:24, 8:24] = 255 - px[8:24, 8:24]
        edited.append(Image.fromarray(px))
    kept = _sample(edited, inputs)
    assert outside_exact(kept) == 1.0 and outside_psnr(kept) == PSNR_IDENTICAL and outside_ssim(kept) == pytest.approx(1.0)
    leaked = []
    for im in edited:  # the edit spills 4 pixels past the box's left edge
        px = np.asarray(im).copy()
        px[8:24, 4:8] = 255 - px[8:24, 4:8]
        leaked.append(Image.fromarray(px))
    broken = _sample(leaked, inputs)
    assert outside_exact(broken) == pytest.approx(1 - 16 * 4 / (32 * 32 - 16 * 16), abs=0.01)
    assert outside_psnr(broken) < 30 and outside_ssim(broken) < 0.95
    with pytest.raises(ValueError, match="need a box: track 'editing' has none"):
        outside_exact(_sample(edited, inputs, box=None))


def test_feature_metrics_rank_a_faithful_output_above_an_unrelated_one():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 8))
    concept_dir = ref.mean(0)
    same = _sample([], [], features=np.eye(8)[:2], input_features=np.eye(8)[:2])
    other = _sample([], [], features=np.eye(8)[2:4], input_features=np.eye(8)[:2])
    assert content_sim(same) == pytest.approx(1.0) and content_sim(other) == pytest.approx(0.0)
    near = _sample([], [], reference=ref, box_features=np.stack([concept_dir, concept_dir]))
    far = _sample([], [], reference=ref, box_features=-np.stack([concept_dir, concept_dir]))
    assert box_ia(near) > 0 > box_ia(far)


def test_synthetic_exact_checks_pass_the_worlds_answer_and_fail_broken_outputs():
    pytest.importorskip("cifc_bench.synth")
    from cifc_bench.api import Concept
    from cifc_bench.synth import world
    from cifc_bench.synth.plugin import box_identity_acc, content_exact

    rng = np.random.default_rng(3)
    style = Concept(name="neon", placeholders=("<n1>",), initializers=(0.01,), class_word="picture", kind="style",
                    image_dir=None, caption_dir=None, prompt_set="style", eval_replacement="<n1>", eval_prompts=(),
                    generator={"personal_style": "neon"})
    scenes = [world.Scene(shape="ball", fill="orange", position="left", background="gray"),
              world.Scene(shape="box", fill="yellow", position="top", background="white")]
    inputs = [Image.fromarray(world.render(s, seed=k)) for k, s in enumerate(scenes)]
    styled = [Image.fromarray(world.grain(world._personal_style(np.asarray(i, np.float32), "neon"), rng)) for i in inputs]
    blank = [Image.new("RGB", (32, 32), (120, 60, 140))] * 2
    moved = [Image.fromarray(np.roll(np.asarray(s), 12, axis=1)) for s in styled]

    def score(outputs):
        return content_exact(TrackImages(concept=style, images=tuple(outputs), prompts=("a picture",) * 2, features=None,
                                         reference_features=None, text_features=None, inputs=tuple(inputs)))

    assert score(styled) == 1.0 and score(blank) == 0.0 and score(moved) < 0.75

    target = world.Scene(shape="kite", fill="pink", pattern="checker", pattern_color="green", mark=("yellow", "bottom-left"))
    kite = Concept(name="kite1", placeholders=("<k1>",), initializers=(0.01,), class_word="kite", kind="object",
                   image_dir=None, caption_dir=None, prompt_set="object", eval_replacement="<k1>", eval_prompts=(),
                   generator={"shape": "kite", "fill": "pink", "pattern": "checker", "pattern_color": "green",
                              "mark": ["yellow", "bottom-left"]})
    box = Box(0.15, 0.47, 0.85, 1.0)
    # the answer: the input's own object on the left stays, the learned kite stands in the box on the right
    answer = world.render(world.replace(target, position="right", background="gray", size="small"), seed=5)
    edited = np.asarray(inputs[0]).copy()
    top, left, bottom, right = box.pixels(32, 32)
    edited[top:bottom, left:right] = answer[top:bottom, left:right]

    def identity(outputs):
        return box_identity_acc(TrackImages(concept=kite, images=tuple(outputs), prompts=("a kite on the right",),
                                            features=None, reference_features=None, text_features=None,
                                            inputs=(inputs[0],), box=box))

    assert identity([Image.fromarray(edited)]) == 1.0 and identity([inputs[0]]) < 0.5


def test_protocol_tracks_are_checked_and_name_the_bad_value(tmp_path):
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.core.protocol_schema import ProtocolError
    from cifc_bench.testing import make_tiny_protocol

    path = make_tiny_protocol(tmp_path, tracks=True)
    raw = yaml.safe_load(path.read_text())
    assert load_protocol(str(path)).track_names == ("style_transfer", "editing")
    for field, value, message in [("strength", 1.5, "tracks.editing.strength.*1.5.*in \\(0, 1\\]"),
                                  ("box", [0.2, 0.1, 1.3, 0.5], "tracks.editing.box.*1.3"),
                                  ("kind", "scene", "tracks.editing.kind.*'scene'.*object"),
                                  ("prompt", "a photo", "tracks.editing.prompt.*'a photo'.*<TOK>"),
                                  ("inputs", [["thing2", 0]], "tracks.editing.inputs\\[0\\].*thing2.*objects"),
                                  ("colour", "red", "tracks.editing.colour.*unknown field")]:
        bad = json.loads(json.dumps(raw))
        bad["tracks"]["editing"][field] = value
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ProtocolError, match=message):
            load_protocol(str(path))


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A finished 3-task finetune run of the tiny protocol with both tracks."""
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import make_tiny_protocol, tiny_run_config

    root = tmp_path_factory.mktemp("tracks")
    protocol = make_tiny_protocol(root, tracks=True)
    run_dir = root / "run"
    result = run_benchmark(tiny_run_config(protocol, method="finetune", prompts_per_concept=1), run_dir)
    return protocol, run_dir, result


def test_a_run_fills_the_track_matrices_for_the_tracks_target_concepts(tracked_run):
    _, run_dir, result = tracked_run
    assert list(result["run_info"]["config"]["tracks"]) == ["style_transfer", "editing"]
    style, edit = result["tracks"]["style_transfer"], result["tracks"]["editing"]
    assert style["concepts"] == ["thing2"] and edit["concepts"] == ["thing0", "thing1"]
    assert style["matrices"]["ia"][2][2] is not None and style["matrices"]["ia"][2][0] is None
    assert [edit["matrices"]["box_ia"][j][0] is not None for j in range(3)] == [True, True, True]  # each task
    assert edit["matrices"]["box_ia"][0][1] is None  # not learned yet
    # the shared sampler keeps every pixel outside the box
    assert all(v == 1.0 for row in edit["matrices"]["outside_exact"] for v in row if v is not None)
    assert result["summary"]["editing/outside_psnr"]["final"] == PSNR_IDENTICAL
    # each output's own scores in the cells learning and final read: the intervals' units; a metric that
    # averages over outputs has their mean as its cell
    units = edit["per_image"]["box_ia"]
    assert sorted(units) == ["0,0", "1,1", "2,0", "2,1"] and len(units["2,1"]) == 2
    assert np.mean(units["2,1"]) == pytest.approx(edit["matrices"]["box_ia"][2][1], abs=1e-6)
    assert sorted(style["per_image"]["content_sim"]) == ["2,2"]
    assert all(v == 1.0 for v in edit["per_image"]["outside_exact"]["2,0"])
    files = sorted(p.relative_to(run_dir / "images").as_posix() for p in (run_dir / "images").rglob("_*/*/*.png"))
    assert "after_task_02/_editing/thing1/k001.png" in files and "after_task_02/_style_transfer/thing2/k000.png" in files
    # the style concept redraws the object concepts' images, never its own
    from cifc_bench.core.config import RunSpec
    from cifc_bench.evaluation.image_cache import track_pairs
    from cifc_bench.run.setup import load_context

    ctx = load_context(RunSpec.from_dict(result["run_info"]["config"]), run_dir, calibration={"thresholds": []},
                       with_method=False)
    track = ctx.sequence.track("editing")
    pairs = track_pairs(ctx, track, ctx.sequence.concept("thing0"))
    assert [r.prompt for r, _, _ in pairs] == ["A photo of a <t0a> <t0b>"] * 2
    assert all(r.init.box == Box(0.25, 0.25, 0.75, 0.75) and r.init.strength == 1.0 for r, _, _ in pairs)
    assert [name for name, _ in track.inputs][:3] == ["thing0", "thing1", "thing0"]  # dealt round-robin
    words = {c.name: c.class_word for c in ctx.sequence.concepts}
    cases = track.cases(ctx.sequence.concept("thing0"), words)
    assert [name for name, _, _ in cases] == ["thing1", "thing1"]  # thing0 never redraws its own images


def test_tracks_flag_selects_or_refuses_and_none_skips(tracked_run, tmp_path, capsys):
    from cifc_bench.cli import main
    from cifc_bench.testing import tiny_run_flags

    protocol, _, _ = tracked_run
    assert main(["run", "--method", "base", *tiny_run_flags(protocol, tracks="nonsense"), "--out", str(tmp_path / "a")]) == 2
    assert "--tracks nonsense: protocol 'tiny' has no track 'nonsense'; it defines ['style_transfer', 'editing']" in \
        capsys.readouterr().err
    assert main(["run", "--method", "base", *tiny_run_flags(protocol, tracks="none", eval_schedule="final"),
                 "--out", str(tmp_path / "b")]) == 0
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["tracks"] is None and not any(k.startswith("editing/") for k in result["summary"])
    assert main(["run", "--method", "base", *tiny_run_flags(protocol, tracks="editing", eval_schedule="final"),
                 "--out", str(tmp_path / "c")]) == 0
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    assert list(result["tracks"]) == ["editing"] and not math.isnan(result["summary"]["editing/box_ia"]["final"])


def test_leaderboard_and_report_show_both_tracks(tracked_run, tmp_path):
    from cifc_bench.reporting.leaderboard import TRACK, leaderboard_tables, render
    from cifc_bench.reporting.report import write_report

    protocol, run_dir, _ = tracked_run
    tables, _, n = leaderboard_tables(str(protocol), run_dir.parent, include_dirty=True)
    edit, style = tables[TRACK + "editing"], tables[TRACK + "style_transfer"]
    assert n == 1 and list(edit["method"]) == ["finetune"] and "box_ia final" in edit.columns
    assert edit.loc[0, "outside_psnr final"].startswith("100.0 [") and style.loc[0, "content_sim learning"] != "–"
    assert "EDITING TRACK: mean [95 % interval]" in render(tables, "md")
    page = write_report([run_dir], tmp_path / "report").read_text()
    assert "<h2 id='tracks'>" in page and "track_editing_0.png" in page and "track_style_transfer_0.png" in page
    assert (tmp_path / "report" / "assets" / "track_editing_0.png").stat().st_size > 1000
    assert sorted(p.name for p in (run_dir / "images" / "_track_inputs" / "editing" / "thing1").iterdir()) == \
        ["k000.png", "k001.png"]


def test_content_exact_reads_the_worlds_answer_on_every_photo(tmp_path):
    pytest.importorskip("cifc_bench.synth")
    from cifc_bench.synth import world
    from cifc_bench.synth.checks import content_preserved
    from cifc_bench.synth.protocol import ensure_data

    root = ensure_data(tmp_path / "synth10")
    photos = [p for d in sorted((root / "images").iterdir()) if d.name not in world.PERSONAL_STYLES
              for p in sorted(d.glob("*.png"))]
    rng = np.random.default_rng(0)
    for style in world.PERSONAL_STYLES:
        passed = defined = flat_passed = 0
        for path in photos:
            source = np.asarray(Image.open(path).convert("RGB"))
            answer = world.grain(world._personal_style(source.astype(np.float32), style), rng)
            check = content_preserved(answer, source, style)
            if check is None:
                continue
            defined += 1
            passed += all(check.values())
            flat_passed += all(content_preserved(np.full_like(answer, int(np.median(answer))), source, style).values())
        print(f"{style}: the answer passes {passed} of {defined} photos ({len(photos) - defined} hidden), a flat "
              f"output {flat_passed}")
        # poster (two levels per channel) hides most objects: 7 of the 37 reference photos of protocol 3.0 show
        # one under it (8 of 2.0's, whose marks and dotted boxes changed the pixels); the others show 28-37
        assert defined >= 7 and passed >= 0.8 * defined and flat_passed == 0, style


@pytest.mark.parametrize("method", ["lora-m"])  # per-task adapters: each state restores its own set
def test_resume_with_tracks_adds_them_to_a_finished_run_as_if_made_with_them(tmp_path, method):
    """A run made without tracks, resumed with ``--tracks``, gets exactly the track matrices of a run made
    with them (every state restored from its saved state)."""
    from cifc_bench.cli import main
    from cifc_bench.testing import make_tiny_protocol, tiny_run_flags

    protocol = make_tiny_protocol(tmp_path, tracks=True)
    flags = tiny_run_flags(protocol, prompts_per_concept=1, images_per_prompt=1)
    assert main(["run", "--method", method, *flags, "--out", str(tmp_path / "with")]) == 0
    assert main(["run", "--method", method, *flags, "--tracks", "none", "--out", str(tmp_path / "later")]) == 0
    later = json.loads((tmp_path / "later" / "result.json").read_text())
    assert later["tracks"] is None
    assert main(["run", "--resume", str(tmp_path / "later"), "--tracks", "editing,style_transfer"]) == 0
    made = json.loads((tmp_path / "with" / "result.json").read_text())
    later = json.loads((tmp_path / "later" / "result.json").read_text())
    assert later["status"] == "completed" and later["matrices"] == made["matrices"]
    assert later["run_info"]["config"]["tracks"] == ["editing", "style_transfer"]
    assert [a["tracks"] for a in later["run_info"]["tracks_added"]] == [["editing", "style_transfer"]]
    for name in ("editing", "style_transfer"):
        assert later["tracks"][name]["matrices"] == made["tracks"][name]["matrices"], name
    assert later["summary"]["editing/box_ia"] == made["summary"]["editing/box_ia"]
