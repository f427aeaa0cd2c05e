"""Stronger image encoders: DINOv2 and DreamSim, each with its own ia_* metric, their clear errors offline."""

import sys
import types

import numpy as np
import pytest
from PIL import Image

from cifc_bench.api import ConceptImages
from cifc_bench.core.config import ConfigError
from cifc_bench.diffusion.dino import DinoLoadError, load_dino
from cifc_bench.evaluation.metrics import ia_dinov2, ia_dreamsim
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.setup import image_encoders
from cifc_bench.testing import tiny_run_config


def _images(seeds):
    """Noisy images of one random colour each."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(s)
        out.append(Image.fromarray(np.clip(rng.integers(0, 255, 3) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)))
    return out


@pytest.mark.parametrize("name,metric,fn", [("dinov2-tiny-random", "ia_dinov2", ia_dinov2),
                                            ("dreamsim-tiny-random", "ia_dreamsim", ia_dreamsim)])
def test_each_encoder_scores_its_own_images_perfectly_and_other_images_lower(name, metric, fn):
    encoder = load_dino(name)
    assert encoder.metric == metric
    references = _images([0])

    def sample(generated):
        return ConceptImages(concept=None, images=tuple(generated), prompts=("x",) * len(generated), features=None,
                             reference_features=None, text_features=None,
                             encoded={metric: encoder.encode_images(generated)},
                             encoded_references={metric: encoder.encode_images(references)})

    assert fn(sample(references * 2)) == pytest.approx(1.0, abs=1e-5)
    assert fn(sample(_images([1, 2]))) < 0.99
    assert fn(sample(_images([1, 2])).image(1)) == pytest.approx(fn(sample(_images([2]))), abs=1e-6)
    with pytest.raises(ValueError, match=f"{metric} needs .* run with --image-encoders"):
        fn(ConceptImages(concept=None, images=(), prompts=(), features=None, reference_features=None,
                         text_features=None))


def test_dreamsim_names_the_install_and_the_download_step(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFC_BENCH_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "dreamsim", None)  # not installed
    with pytest.raises(DinoLoadError, match=r"pip install 'cifc-bench\[dreamsim\]'.*dreamsim\(pretrained=True"):
        load_dino("dreamsim")
    fake = types.ModuleType("dreamsim")
    fake.dreamsim = lambda **kw: pytest.fail("must not build DreamSim without its weights")
    monkeypatch.setitem(sys.modules, "dreamsim", fake)  # installed, weights not downloaded
    with pytest.raises(DinoLoadError, match=rf"not in {tmp_path / 'dreamsim'} \(missing dino_vitb16_pretrain.pth.*"
                                            r"ensemble_lora\)\. Download them once with network access"):
        load_dino("dreamsim")


def test_dinov2_offline_without_its_weights_names_the_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DinoLoadError, match=r"'dinov2-vits14' \(vit_small_patch14_dinov2.lvd142m\) could not be "
                                            r"loaded.*run once with network access"):
        load_dino("dinov2-vits14")


def test_two_encoders_of_one_metric_are_an_error():
    with pytest.raises(ConfigError, match="'dinov2-tiny-random' gives ia_dinov2, which the run already measures"):
        image_encoders(["dinov2-tiny-random", "dinov2-tiny-random"], "cpu")


def test_a_run_with_image_encoders_records_each_metric_and_its_per_image_scores(tmp_path, tiny_protocol):
    result = run_benchmark(tiny_run_config(tiny_protocol, method="base", eval_schedule="final",
                                           image_encoders=("dinov2-tiny-random", "dreamsim-tiny-random")),
                           tmp_path / "run")
    for metric in ("ia_dinov2", "ia_dreamsim"):
        final = result["matrices"][metric][-1]
        assert all(-1 <= v <= 1 for v in final) and len(set(final)) > 1
        cells = result["per_image"][metric]
        assert np.mean(cells["2,0"]) == pytest.approx(final[0], abs=1e-9)
