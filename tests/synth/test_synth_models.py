"""The synthetic tier's pretrained models: offline loading, reproducible pretraining, gate measurement."""

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest

from cifc_bench.synth import weights_dir
from cifc_bench.synth.pretrain import PretrainError, pretrain
from cifc_bench.synth.pretrain_data import PretrainConfig


def test_committed_weights_load_offline_through_the_bundle_code():
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer

    bundle = load_bundle("synth")
    assert bundle.vae is None and bundle.unet.config.in_channels == 3  # pixel space, 32x32
    assert bundle.unet.dtype.is_floating_point and str(bundle.unet.dtype) == "torch.float32"
    assert len(bundle.tokenizer) == 49408 and bundle.tokenizer.model_max_length == 32
    scorer = load_scorer("synth")
    feats = scorer.encode_texts(["a red ball on the left, on a gray background"])
    assert feats.shape == (1, 64) and np.isclose(np.linalg.norm(feats), 1.0)


def test_committed_weights_match_their_manifest_and_size_budget():
    from cifc_bench.synth import world

    manifest = json.loads((weights_dir() / "manifest.json").read_text())
    assert manifest["config"] == asdict(PretrainConfig())  # `cifc-bench synth pretrain` defaults = this recipe
    assert manifest["world"] == world.VERSION
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((weights_dir() / rel).read_bytes()).hexdigest() == digest, rel
    assert manifest["total_bytes"] <= 20 * 2**20
    assert all(rel.endswith((".safetensors", ".json")) for rel in manifest["files"])  # nothing pickled
    assert [c["index"] for c in manifest["chunks"]] == list(range(manifest["chunks_done"]))
    assert all(c["seconds"] <= 2.2 * 3600 for c in manifest["chunks"])  # chunks of at most about 2 hours


TINY = dict(text_steps=2, unet_steps=6, scorer_steps=2, batch_size=4, scorer_batch_size=8, text_batch_size=8,
            chunk_steps=3, save_every=2)


def _shipped(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and "pretrain-state" not in p.parts and p.name != "manifest.json"}


def test_chunked_killed_and_resumed_pretraining_gives_the_files_of_one_uninterrupted_run(tmp_path):
    cfg = PretrainConfig(**TINY)
    whole = pretrain(cfg, tmp_path / "whole")
    assert [c["index"] for c in whole["chunks"]] == [0, 1, 2]
    # chunk by chunk, as sessions would run it
    assert len(pretrain(cfg, tmp_path / "chunked", max_chunks=1)["chunks"]) == 1
    with pytest.raises(PretrainError, match="pass --resume"):  # finished work is never restarted by mistake
        pretrain(cfg, tmp_path / "chunked")
    with pytest.raises(PretrainError, match="another recipe.*unet_steps"):
        pretrain(PretrainConfig(**{**TINY, "unet_steps": 9}), tmp_path / "chunked", resume=True)
    paused = pretrain(cfg, tmp_path / "chunked", resume=True, max_seconds=0.0)  # a time box: saved mid-chunk
    assert paused["paused"] == {"chunk": 1, "unet_step": 1} and len(paused["chunks"]) == 1
    pretrain(cfg, tmp_path / "chunked", resume=True, max_chunks=1)
    # killed (SIGKILL) in the middle of the last chunk, then resumed from its last saved state
    code = ("import sys; from cifc_bench.synth.pretrain import PretrainConfig, pretrain; "
            f"pretrain(PretrainConfig(**{TINY!r}), sys.argv[1], resume=True)")
    env = {**__import__("os").environ, "CIFC_BENCH_FAULT": "kill:pretrain-step:2"}
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "chunked")], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    env["CIFC_BENCH_FAULT"] = "kill:pretrain-export:1"  # and again after the last chunk, before its export
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path / "chunked")], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    resumed = pretrain(cfg, tmp_path / "chunked", resume=True)
    assert [c["sha256"] for c in resumed["chunks"]] == [c["sha256"] for c in whole["chunks"]]
    assert _shipped(tmp_path / "chunked") == _shipped(tmp_path / "whole")
    manifest = json.loads((tmp_path / "chunked" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["files"] == _shipped(tmp_path / "whole")
    other = pretrain(PretrainConfig(seed=1, **TINY), tmp_path / "seed1")
    assert other["chunks"][0]["sha256"] != whole["chunks"][0]["sha256"]


def test_a_damaged_state_file_is_refused_with_the_way_out(tmp_path):
    pretrain(PretrainConfig(**TINY), tmp_path, max_chunks=2)
    state = tmp_path / "pretrain-state" / "unet.safetensors"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="does not match its own checksum.*Delete it"):
        pretrain(PretrainConfig(**TINY), tmp_path, resume=True)


def test_caption_parser_reads_every_attribute_the_grammar_can_state():
    from cifc_bench.synth import world
    from cifc_bench.synth.pretrain_data import caption_attributes, caption_targets

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
    from cifc_bench.synth.pretrain_data import personal_identities, shape_contrast_pair

    rng = np.random.default_rng(0)
    for _ in range(20):
        (img_a, text_a), (img_b, text_b) = shape_contrast_pair(rng, PretrainConfig(), personal_identities())
        words_a, words_b = text_a.replace(",", "").split(), text_b.replace(",", "").split()
        diff = [(x, y) for x, y in zip(words_a, words_b, strict=True) if x != y]
        assert len(diff) <= 1 and all(x in world.SHAPES and y in world.SHAPES for x, y in diff)
        assert (img_a != img_b).any() or not diff


def test_gate_measurement_runs_and_is_bounded():
    from cifc_bench.api import GenerationSettings
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer
    from cifc_bench.synth.base_report import base_model_report

    report = base_model_report(load_bundle("synth"), load_scorer("synth"), n_prompts=6, images_per_class=2,
                               settings=GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=3.0,
                                                                  batch_size=4))
    assert 0.0 <= report["context_acc"] <= 1.0 and 0.0 <= report["class_acc"] <= 1.0
    assert report["n_prompts"] == 6 and len(report["class_images"]) == 10
    assert np.mean(list(report["class_acc_by_class"].values())) == pytest.approx(report["class_acc"])
    binding = report["two_object_fill_binding"]
    assert binding["both"] <= min(binding["left"], binding["right"]) and binding["n"] == 100
    # the ceiling: the committed scorer names the class of the world's own renders far above chance (20 %)
    assert report["class_acc_renders"] >= 0.6


def load_protocol_raw():
    from cifc_bench.core.protocol import load_protocol

    return load_protocol("synth10").raw


@pytest.fixture(scope="module")
def oracle_figures(tmp_path_factory):
    """``oracle_report`` on the committed weights, small: perfect renders, class-word images, siblings."""
    from cifc_bench.api import GenerationSettings
    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.scoring import load_scorer
    from cifc_bench.synth.base_report import oracle_report
    from cifc_bench.synth.protocol import ensure_data

    sequence = load_protocol("synth10").bind(ensure_data(tmp_path_factory.mktemp("data")))
    settings = GenerationSettings(resolution=32, num_inference_steps=10, guidance_scale=3.0, batch_size=40)
    return oracle_report(load_bundle("synth"), load_scorer("synth"), sequence, per_prompt=10, calibration_images=20,
                         settings=settings)


def test_the_exact_oracles_are_sound_on_the_committed_models_images(oracle_figures):
    """cnr_exact calls perfect boxed renders present and siblings absent; identity_acc of perfect renders is whole."""
    assert oracle_figures["cnr_exact_present_perfect"] >= 0.98 and oracle_figures["identity_acc_perfect"] >= 0.95
    assert oracle_figures["cnr_exact_present_sibling"] <= 0.05 and oracle_figures["cnr_exact_present_classword"] <= 0.10
    separation = oracle_figures["scorer_box_separation"]
    n_boxes = sum(len(m["concepts"]) for m in load_protocol_raw()["multi_concept_prompts"])  # 3.0: 10 prompts x 2
    assert len(separation) == n_boxes and all(0 <= v["generic_admitted"] <= 1 for v in separation.values())


@pytest.mark.xfail(strict=True, reason="issue 22 gate not met (blocked, a design question): the calibrated scorer's "
                   "cnr of perfect renders is 0.79 on the final v2 weights (results/synth-check/v2-final.json), target "
                   "<= 0.10; the scorer's box similarity cannot tell a concept from generic renders of its class "
                   "(scorer_box_separation); strict, so the suite says when it passes and this mark must go")
def test_perfect_renders_of_the_boxed_prompts_are_present_for_the_calibrated_scorer(oracle_figures):
    """The neglect rate can move: the world's own renders of what the boxed prompts ask are called present by
    the scorer's cnr under thresholds calibrated as a run calibrates them (v1: cnr = 1.00)."""
    assert oracle_figures["scorer_cnr_perfect"] <= 0.10, oracle_figures["scorer_cnr_perfect_by_prompt"]


def test_committed_scorer_names_the_class_of_clean_renders():
    """The ruler of class accuracy: zero-shot on grainy ground-truth renders it must know the world's shapes
    (94 % on 300 renders when committed; the previous, 32-pixel-input scorer managed 70 %)."""
    from PIL import Image

    from cifc_bench.diffusion.scoring import load_scorer
    from cifc_bench.synth.base_report import class_predictions, class_word_renders
    from cifc_bench.synth.pretrain_models import _grain

    renders, truth = class_word_renders(30, seed=123)
    rng = np.random.default_rng(123)
    grainy = [Image.fromarray(_grain(np.asarray(im), rng)) for im in renders]
    assert np.mean(class_predictions(load_scorer("synth"), grainy) == truth) >= 0.85


@pytest.mark.slow  # two whole synth10 runs (about a minute each): the slow step, so CI's two steps stay balanced
@pytest.mark.parametrize("method", ["base", "finetune"])
def test_shortened_synth10_run_is_the_default_protocol(tmp_path, method):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cifc_bench.cli", "run", "--method", method, "--steps", "2",
                           "--prompts-per-concept", "2", "--images-per-prompt", "1", "--num-inference-steps", "2",
                           "--calibration-images", "4", "--multi-images-per-prompt", "2", "--retention-prompts", "2",
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["run_info"]["protocol"]["name"] == "synth10"
    assert result["run_info"]["model"] == "synth" and result["run_info"]["scorer"] == "synth"
    assert set(result["matrices"]) == {"ia", "ta", "context_acc", "identity_acc"}
    kinds = [c["kind"] for c in __import__("cifc_bench.core.protocol", fromlist=["x"]).load_protocol("synth10").raw["concepts"]]
    final = result["matrices"]["context_acc"][-1]
    # object prompts ask for backgrounds/positions; the first style prompts ask for nothing checkable (null)
    assert all(v is not None for v, k in zip(final, kinds, strict=True) if k == "object")
    # the ten boxed two-object prompts (with their region prompts) are all evaluated on the final model
    assert len(result["neglect"]["prompts"]) == 10 and None not in result["neglect"]["matrices"]["cnr"][-1]
    assert all(len(p["region_prompts"]) == 2 for p in result["neglect"]["prompts"])
    assert None not in result["neglect"]["matrices"]["cnr_exact"][-1]  # the exact neglect rate beside it
    diagonal = [row[i] for i, row in enumerate(result["matrices"]["identity_acc"])]
    # identity is measured for every concept on its own prompts (style prompts name a plain picture)
    assert all(v is not None and 0.0 <= v <= 1.0 for v in diagonal)
