"""``cifc-bench generate``: a user's prompt, with learned concepts in braces, on a finished run's model."""

import json

import numpy as np
import pytest

from cifc_bench.api import Box
from cifc_bench.cli import main
from cifc_bench.run.generate import GenerateError, expand_prompt, parse_boxes, requests_for


@pytest.fixture(scope="module")
def cidm_run(tiny_protocol, tmp_path_factory):
    """A finished CIDM run of the tiny protocol (three concepts; CIDM reads boxes and region prompts)."""
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    run_dir = tmp_path_factory.mktemp("gen") / "run"
    run_benchmark(tiny_run_config(tiny_protocol, method="cidm", prompts_per_concept=1), run_dir)
    return run_dir


def test_prompt_braces_expand_to_learned_concepts_and_unknown_names_are_listed(tiny_protocol):
    from pathlib import Path

    from cifc_bench.core.protocol import load_protocol

    learned = {c.name: c for c in load_protocol(str(tiny_protocol)).bind(Path("."), check=False).concepts[:2]}
    text, used = expand_prompt("a {thing1} next to a {thing0} and {thing1}", learned)
    assert text == "a <t1a> <t1b> next to a <t0a> <t0b> and <t1a> <t1b>" and [c.name for c in used] == ["thing1", "thing0"]
    with pytest.raises(GenerateError, match=r"names \{thing2\}, which this run has not learned; learned: thing0, thing1"):
        expand_prompt("a {thing2}", learned)
    with pytest.raises(GenerateError, match=r"--box 'thing0=0.2,0.1,1.3,0.5': box \(0.2, 0.1, 1.3, 0.5\) is not"):
        parse_boxes(["thing0=0.2,0.1,1.3,0.5"])
    with pytest.raises(GenerateError, match="write CONCEPT=y0,x0,y1,x1"):
        parse_boxes(["thing0=0.2,0.1"])
    with pytest.raises(GenerateError, match="give a box for every concept the prompt names .*missing thing1"):
        requests_for("{thing0} and {thing1}", learned, 1, 0, {"thing0": Box(0, 0, 1, 0.5)})
    with pytest.raises(GenerateError, match="--region-prompt needs --box"):
        requests_for("{thing0}", learned, 1, 0, regions={"thing0": "a toy"})
    with pytest.raises(GenerateError, match="--n 0"):
        requests_for("{thing0}", learned, 0, 0)


def test_generate_writes_images_grid_and_request_and_repeats_itself(cidm_run, tmp_path):
    out = tmp_path / "a"
    assert main(["generate", str(cidm_run), "--prompt", "a photo of {thing0} on a table", "--n", "3", "--seed", "5",
                 "--out", str(out)]) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["000_s5.png", "001_s6.png", "002_s7.png", "grid.png"]
    asked = json.loads((out / "request.json").read_text())
    assert asked["expanded_prompt"] == "a photo of <t0a> <t0b> on a table" and asked["after_task"] == 3
    again = tmp_path / "b"
    assert main(["generate", str(cidm_run), "--prompt", "a photo of {thing0} on a table", "--n", "3", "--seed", "5",
                 "--out", str(again)]) == 0  # the same command gives the same images (batches alike: float sums
    from PIL import Image  # depend on the batch, as in the harness, whose batches the protocol fixes)

    for name in files:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(again / name))), name


def test_boxed_generation_reads_region_prompts_and_after_task_limits_the_concepts(cidm_run, tmp_path, capsys):
    from PIL import Image

    boxed = ["--prompt", "a {thing0} next to a {thing1}", "--n", "1", "--box", "thing0=0,0,1,0.5", "thing1=0,0.5,1,1"]
    assert main(["generate", str(cidm_run), *boxed, "--out", str(tmp_path / "plain")]) == 0
    assert main(["generate", str(cidm_run), *boxed, "--region-prompt", "thing1=a {thing1} in the forest",
                 "--out", str(tmp_path / "region")]) == 0
    plain, region = (np.asarray(Image.open(tmp_path / d / "000_s0.png")) for d in ("plain", "region"))
    assert plain.shape == region.shape and not np.array_equal(plain, region), "the region prompt did not reach CIDM"
    assert main(["generate", str(cidm_run), "--prompt", "a {thing1}", "--after-task", "1", "--out",
                 str(tmp_path / "early")]) == 2
    assert "names {thing1}, which this run has not learned; learned: thing0" in capsys.readouterr().err


def test_generate_redraws_an_input_image_in_both_modes(cidm_run, tmp_path):
    from PIL import Image

    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    source.save(tmp_path / "in.png")
    edit = tmp_path / "edit"
    assert main(["generate", str(cidm_run), "--prompt", "a photo of {thing0}", "--n", "2", "--init-image",
                 str(tmp_path / "in.png"), "--mask-box", "0.25,0.25,0.75,0.75", "--out", str(edit)]) == 0
    inside = np.zeros((32, 32), bool)
    inside[8:24, 8:24] = True
    for name in ("000_s0.png", "001_s1.png"):
        pixels = np.asarray(Image.open(edit / name))
        assert np.array_equal(pixels[~inside], np.asarray(source)[~inside]) and not np.array_equal(pixels, source)
    # the input, then the two images, each 32-pixel tile enlarged 4x (nearest) to be seen
    sheet = np.asarray(Image.open(edit / "grid.png"))
    assert sheet.shape[:2] == (128, 3 * 128)
    assert np.array_equal(sheet[1:128:4, 1:128:4][1:-1, 1:-1], np.asarray(source)[1:-1, 1:-1])  # box lines aside
    asked = json.loads((edit / "request.json").read_text())
    assert asked["mask_box"] == "0.25,0.25,0.75,0.75" and asked["strength"] == 1.0
    style = tmp_path / "style"
    assert main(["generate", str(cidm_run), "--prompt", "a photo of {thing1}", "--n", "1", "--init-image",
                 str(tmp_path / "in.png"), "--strength", "0.5", "--out", str(style)]) == 0
    assert json.loads((style / "request.json").read_text())["strength"] == 0.5


def test_generate_refuses_a_missing_input_image_before_loading_the_model(cidm_run, tmp_path, capsys):
    assert main(["generate", str(cidm_run), "--prompt", "a {thing0}", "--init-image", str(tmp_path / "gone.png"),
                 "--strength", "0.5"]) == 2
    assert "--init-image" in capsys.readouterr().err


def test_repeated_box_and_region_prompt_flags_accumulate():
    from cifc_bench.cli import build_parser

    args = build_parser().parse_args(["generate", "run", "--prompt", "a {a} and a {b}", "--box", "a=0,0,1,0.5",
                                      "--box", "b=0,0.5,1,1", "--region-prompt", "a=a {a}", "--region-prompt", "b=a {b}"])
    assert args.box == ["a=0,0,1,0.5", "b=0,0.5,1,1"] and args.region_prompt == ["a=a {a}", "b=a {b}"]
    one_flag = build_parser().parse_args(["generate", "run", "--prompt", "p", "--box", "a=0,0,1,0.5", "b=0,0.5,1,1"])
    assert one_flag.box == ["a=0,0,1,0.5", "b=0,0.5,1,1"]
