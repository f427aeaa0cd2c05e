"""``cifc-bench generate`` on the committed synth10 reference runs, for every registered method and every mode:
single-concept, boxed multi-concept with region prompts, style transfer and editing."""

from pathlib import Path

import numpy as np
import pytest

from cifc_bench.run.generate import GenerateError, image_init, parse_regions, requests_for, restore

pytest.importorskip("cifc_bench.synth")

ROOT = Path(__file__).resolve().parents[1] / "results"
RESULTS = ROOT / "synth10"  # the runs of the installed protocol version
ARCHIVE = ROOT / "archive" / "synth10-2.0"  # protocol 2.0's: every method but replay


def committed_run(method: str) -> Path:
    """The seed-0 run of ``method`` on the installed protocol."""
    return RESULTS / method / "s0"


def test_every_method_has_a_committed_run_with_its_final_state():
    from cifc_bench.core.registry import METHODS, list_plugins

    missing = [m for m in list_plugins(METHODS)
               if not (RESULTS / m / "s0" / "state" / "after_task_09.safetensors").is_file()]
    assert not missing, f"no committed synth10 run with a final state for {missing} (results/synth10/<method>/s0)"


def test_the_archived_runs_keep_their_final_states():
    missing = [d.name for d in ARCHIVE.iterdir() if d.is_dir() and
               not (d / "s0" / "state" / "after_task_09.safetensors").is_file()]
    assert not missing, f"archived protocol 2.0 runs without a final state: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["base", "finetune", "cidm", "lora-m", "lora-c", "ewc", "lwf", "c-lora",
                                    "custom-diffusion", "mix-of-show", "replay"])
def test_generate_serves_every_mode_on_a_committed_run(method):
    ctx, j = restore(committed_run(method))
    assert j == 10
    learned = {c.name: c for c in ctx.sequence.concepts}
    photo = learned["ball1"].image_paths()[0]
    settings = ctx.settings

    single = requests_for("a {kite1} on the left", learned, 2, 0)
    boxes = {"ball1": ctx.sequence.multi_concept_prompts[0].boxes[0], "box1": ctx.sequence.multi_concept_prompts[0].boxes[1]}
    regions = parse_regions(["ball1=a {ball1}", "box1=a {box1}"], learned)
    multi = requests_for("a {ball1} on the left and a {box1} on the right", learned, 1, 0, boxes, regions)
    assert multi[0].region_prompts == ("a <ball1> <ball2>", "a <box1> <box2>") and multi[0].boxes is not None
    style = requests_for("a {neon} of a ball", learned, 1, 0, init=image_init(photo, strength=0.6))
    keep = requests_for("a {neon} of a ball", learned, 1, 0, init=image_init(photo, strength=0.01))
    edit = requests_for("a {kite1} on the right", learned, 1, 0, init=image_init(photo, mask_box="0.15,0.47,0.85,1.0"))
    with ctx.precision():
        images = {name: ctx.method.generate(reqs, settings)
                  for name, reqs in [("single", single), ("multi", multi), ("style", style), ("keep", keep), ("edit", edit)]}
    assert [len(v) for v in images.values()] == [2, 1, 1, 1, 1]
    source = np.asarray(edit[0].init.image.convert("RGB"), dtype=np.int16)
    out = np.asarray(images["edit"][0], dtype=np.int16)
    top, left, bottom, right = edit[0].init.box.pixels(*source.shape[:2])
    outside = np.ones(source.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(out[outside], source[outside]) and not np.array_equal(out[~outside], source[~outside])
    # strength -> 0 returns the input (a pixel-space model has no codec); 0.6 redraws it
    assert np.abs(np.asarray(images["keep"][0], dtype=np.int16) - source).max() <= 2
    assert np.abs(np.asarray(images["style"][0], dtype=np.int16) - source).mean() > 2


def test_generate_refuses_a_state_the_commit_does_not_keep():
    with pytest.raises(GenerateError, match=r"--after-task 3: .*keeps the state after task 10 only"):
        restore(committed_run("cidm"), after_task=3)
