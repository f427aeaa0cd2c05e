"""The synthetic tier's pretrained models: offline loading, reproducible pretraining, gate measurement."""

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from cifc_bench.synth import weights_dir
from cifc_bench.synth.pretrain import PretrainConfig, pretrain


def test_committed_weights_load_offline_through_the_bundle_code():
    from cifc_bench.models import load_bundle
    from cifc_bench.scoring import load_scorer

    bundle = load_bundle("synth")
    assert bundle.vae is None and bundle.unet.config.in_channels == 3  # pixel space, 32x32
    assert bundle.unet.dtype.is_floating_point and str(bundle.unet.dtype) == "torch.float32"
    assert len(bundle.tokenizer) == 49408 and bundle.tokenizer.model_max_length == 32
    scorer = load_scorer("synth")
    feats = scorer.encode_texts(["a red ball on the left, on a gray background"])
    assert feats.shape == (1, 64) and np.isclose(np.linalg.norm(feats), 1.0)


def test_committed_weights_match_their_manifest_and_size_budget():
    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    assert manifest["config"] == asdict(PretrainConfig())  # `cifc-bench synth pretrain` defaults = this recipe
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((weights_dir() / rel).read_bytes()).hexdigest() == digest, rel
    assert manifest["total_bytes"] <= 20 * 2**20


def test_pretraining_is_reproducible_from_the_seed(tmp_path):
    small = dict(text_steps=2, unet_steps=2, scorer_steps=2, batch_size=4, scorer_batch_size=8, text_batch_size=8)
    cfg = PretrainConfig(**small)
    a = pretrain(cfg, tmp_path / "a")
    b = pretrain(cfg, tmp_path / "b", parts=("base",))  # the parts train from separate streams:
    b = pretrain(cfg, tmp_path / "b", parts=("scorer",))  # separate calls give the same files as one
    assert a["files"] == b["files"] and set(b) >= {"scorer", "base"}
    c = pretrain(PretrainConfig(seed=1, **small), tmp_path / "c")
    assert c["files"]["base/unet/diffusion_pytorch_model.safetensors"] != a["files"]["base/unet/diffusion_pytorch_model.safetensors"]


def test_retraining_one_part_keeps_the_other_parts_manifest_entry_only_if_its_recipe_is_unchanged(tmp_path):
    from dataclasses import replace

    small = PretrainConfig(text_steps=2, unet_steps=2, scorer_steps=2, batch_size=4, scorer_batch_size=8,
                           text_batch_size=8)
    first = pretrain(small, tmp_path)
    new_scorer = pretrain(replace(small, scorer_steps=3), tmp_path, parts=("scorer",))
    assert new_scorer["base"] == first["base"] and new_scorer["scorer"]["config"]["scorer_steps"] == 3
    assert new_scorer["files"]["scorer.pt"] != first["files"]["scorer.pt"]
    new_base_recipe = pretrain(replace(small, scorer_steps=3, unet_steps=3), tmp_path, parts=("scorer",))
    assert "base" not in new_base_recipe  # the base files on disk no longer match the recipe: no entry vouches for them


def test_pretraining_rejects_an_unknown_part(tmp_path):
    with pytest.raises(ValueError, match="unknown pretraining part.*'vae'"):
        pretrain(PretrainConfig(), tmp_path, parts=("vae",))


def test_caption_parser_reads_every_attribute_the_grammar_can_state():
    from cifc_bench.synth import world
    from cifc_bench.synth.pretrain import caption_attributes, caption_targets

    scene = world.Scene("kite", "red", "stripes", "blue", "small", "left", "grass", "mosaic")
    assert caption_attributes(world.caption(scene)) == {
        "style": "mosaic", "background": "grass", "size0": "small", "fill0": "red", "shape0": "kite",
        "pattern_color0": "blue", "pattern0": "stripes", "position0": "left"}
    two = world.caption_many([world.Scene("ball", "red", position="left"), world.Scene("box", "cyan", position="right")])
    assert caption_attributes(two) == {"background": "gray", "size0": "large", "fill0": "red", "shape0": "ball",
                                       "position0": "left", "size1": "large", "fill1": "cyan", "shape1": "box",
                                       "position1": "right"}
    assert caption_attributes("a ball") == {"shape0": "ball"}
    assert sum(caption_targets("a ball")) == 1 + world.SHAPES.index("ball")  # every other slot: "not stated"


def test_scorer_hard_negatives_differ_only_in_the_object_class():
    from cifc_bench.synth import world
    from cifc_bench.synth.pretrain import personal_identities, shape_contrast_pair

    rng = np.random.default_rng(0)
    for _ in range(20):
        (img_a, text_a), (img_b, text_b) = shape_contrast_pair(rng, PretrainConfig(), personal_identities())
        words_a, words_b = text_a.replace(",", "").split(), text_b.replace(",", "").split()
        diff = [(x, y) for x, y in zip(words_a, words_b, strict=True) if x != y]
        assert len(diff) <= 1 and all(x in world.SHAPES and y in world.SHAPES for x, y in diff)
        assert (img_a != img_b).any() or not diff


def test_gate_measurement_runs_and_is_bounded():
    from cifc_bench.api import GenerationSettings
    from cifc_bench.models import load_bundle
    from cifc_bench.scoring import load_scorer
    from cifc_bench.synth.base_report import base_model_report

    report = base_model_report(load_bundle("synth"), load_scorer("synth"), n_prompts=6, images_per_class=2,
                               settings=GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=3.0,
                                                                  batch_size=4))
    assert 0.0 <= report["context_acc"] <= 1.0 and 0.0 <= report["class_acc"] <= 1.0
    assert report["n_prompts"] == 6 and len(report["class_images"]) == 10
    assert np.mean(list(report["class_acc_by_class"].values())) == pytest.approx(report["class_acc"])
    # the ceiling: the committed scorer names the class of the world's own renders far above chance (20 %)
    assert report["class_acc_renders"] >= 0.6


def test_committed_scorer_names_the_class_of_clean_renders():
    """The ruler of class accuracy: zero-shot on grainy ground-truth renders it must know the world's shapes
    (94 % on 300 renders when committed; the previous, 32-pixel-input scorer managed 70 %)."""
    from PIL import Image

    from cifc_bench.scoring import load_scorer
    from cifc_bench.synth.base_report import class_predictions, class_word_renders
    from cifc_bench.synth.pretrain import _grain

    renders, truth = class_word_renders(30, seed=123)
    rng = np.random.default_rng(123)
    grainy = [Image.fromarray(_grain(np.asarray(im), rng)) for im in renders]
    assert np.mean(class_predictions(load_scorer("synth"), grainy) == truth) >= 0.85


@pytest.mark.parametrize("method", ["base", "finetune"])
def test_shortened_synth10_run_is_the_default_protocol(tmp_path, method):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "run", "--method", method, "--steps", "2",
                           "--prompts-per-concept", "2", "--images-per-prompt", "1", "--num-inference-steps", "2",
                           "--calibration-images", "4", "--multi-images-per-prompt", "2",
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["run_info"]["protocol"]["name"] == "synth10"
    assert result["run_info"]["model"] == "synth" and result["run_info"]["scorer"] == "synth"
    assert set(result["matrices"]) == {"ia", "ta", "context_acc"}
    kinds = [c["kind"] for c in __import__("cifc_bench.protocol", fromlist=["x"]).load_protocol("synth10").raw["concepts"]]
    final = result["matrices"]["context_acc"][-1]
    # object prompts ask for backgrounds/positions; the first style prompts ask for nothing checkable (null)
    assert all(v is not None for v, k in zip(final, kinds, strict=True) if k == "object")
    # the four boxed two-object prompts are all evaluated on the final model
    assert len(result["neglect"]["prompts"]) == 4 and None not in result["neglect"]["matrices"]["cnr"][-1]
