"""Model bundles load through from_pretrained, offline; missing models fail with a clear message."""

import pytest

from cifc_bench.diffusion.models import ModelLoadError, load_bundle, save_tiny_random


def test_tiny_random_is_saved_then_loaded_through_from_pretrained(tmp_path):
    import torch

    path = save_tiny_random(tmp_path / "tiny")
    assert {p.name for p in path.iterdir()} >= {"tokenizer", "text_encoder", "unet", "scheduler", "vae", "model_index.json"}
    a, b = load_bundle(str(path)), load_bundle(str(path))
    assert a.source == str(path) and len(a.tokenizer) == 49408
    assert a.tokenizer("a <dog1>").input_ids == b.tokenizer("a <dog1>").input_ids
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not any(p.requires_grad for p in a.unet.parameters())  # bundles arrive frozen


def test_tiny_random_is_reproducible_from_its_seed(tmp_path):
    import torch

    a, b = load_bundle(str(save_tiny_random(tmp_path / "a"))), load_bundle(str(save_tiny_random(tmp_path / "b")))
    assert all(torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values(), strict=True))


def test_missing_hub_model_offline_says_what_to_do():
    with pytest.raises(ModelLoadError) as info:
        load_bundle("someone/not-a-cached-model")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE is set" in msg and "--model PATH" in msg and "tiny-random" in msg


def test_missing_scorer_weights_offline_says_what_to_do():
    from cifc_bench.diffusion.scoring import ScorerLoadError, load_scorer

    with pytest.raises(ScorerLoadError, match="run once with network access"):
        load_scorer("clip-vit-b32")
    with pytest.raises(ScorerLoadError, match="unknown scorer 'clip'"):
        load_scorer("clip")


def test_tiny_scorer_uses_clip_preprocessing_and_normalised_features():
    import numpy as np
    from PIL import Image

    from cifc_bench.diffusion.scoring import load_scorer

    scorer = load_scorer("tiny-random")
    steps = [type(t).__name__ for t in scorer.preprocess.transforms]
    assert steps[:2] == ["Resize", "CenterCrop"] and "bicubic" in str(scorer.preprocess.transforms[0]).lower()
    feats = scorer.encode_images([Image.new("RGB", (40, 60), "red"), Image.new("RGB", (64, 64), "blue")])
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0)
    assert np.allclose(np.linalg.norm(scorer.encode_texts(["a dog", "a cat"]), axis=1), 1.0)


def test_sd15_random_has_sd15s_architecture_and_parameter_counts():
    """The GPU check's model: SD-1.5's published sizes (UNet 859.52M, CLIP ViT-L/14 text 123.06M, VAE 83.65M
    parameters), checked on the meta device so nothing is allocated or written."""
    from pathlib import Path
    from unittest import mock

    import torch

    import cifc_bench.diffusion.models as models

    built = {}
    with torch.device("meta"), mock.patch.object(models, "save_bundle_folder",
                                                 lambda path, tok, te, unet, sch, vae: built.update(te=te, unet=unet, vae=vae, sch=sch)):
        models.save_sd15_random(Path("unused"))
    counts = {k: round(sum(p.numel() for p in built[k].parameters()) / 1e4) / 100 for k in ("te", "unet", "vae")}
    assert counts == {"te": 123.06, "unet": 859.52, "vae": 83.65}
    assert built["unet"].config.cross_attention_dim == 768 and built["vae"].config.scaling_factor == 0.18215
    assert all(p.dtype == torch.float16 for k in ("te", "unet", "vae") for p in built[k].parameters())
    assert type(built["sch"]).__name__ == "PNDMScheduler"  # loading turns it into DPM-Solver++, as for SD-1.5
