import numpy as np
import pytest

from cifc_bench.core.seeding import derive_seed, image_seed, train_seed


@pytest.mark.parametrize("text", [
    "A <dog1> <dog2>, in the swimming pool",
    "A yellow rubber duck toy, cyberpunk 2077, 4K, 3d render in unreal engine",
    "A painting of a cat in the style of Claude Monet",
])
def test_offline_tokenizer_matches_open_clip_ids(text):
    import open_clip

    from cifc_bench.diffusion.tokenizer import build_clip_tokenizer

    ours = build_clip_tokenizer()(text).input_ids
    reference = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    assert len(build_clip_tokenizer()) == 49408
    assert ours == reference[: len(ours)]
    assert reference[len(ours)] == 0  # open_clip pads with 0 after the end token


def test_seeds_are_stable_across_processes_and_distinct():
    # fixed values: a change here silently changes every published number
    assert image_seed("cifc10", "dog", 0, 0) == derive_seed("image", "cifc10", "dog", 0, 0)
    assert image_seed("cifc10", "dog", 0, 0) == 2597503341082650365
    seeds = {image_seed("cifc10", c, p, k) for c in ("dog", "cat") for p in range(5) for k in range(5)}
    assert len(seeds) == 50
    assert train_seed(0, 1) != train_seed(1, 1) != train_seed(0, 2)


def test_generation_is_deterministic_and_independent_of_batching():
    from cifc_bench.api import GenerationSettings
    from cifc_bench.diffusion.models import load_bundle
    from cifc_bench.diffusion.sampling import generate_batched

    bundle = load_bundle("tiny-random")
    settings = GenerationSettings(resolution=32, num_inference_steps=2, guidance_scale=7.5, batch_size=3)
    prompts, seeds = ["a dog", "a cat", "a toy"], [11, 12, 13]
    together = generate_batched(bundle, prompts, seeds, settings)
    one_by_one = [generate_batched(bundle, [p], [s], settings)[0] for p, s in zip(prompts, seeds, strict=True)]
    # the noise of every image depends on its seed alone; the network's float arithmetic may round differently
    # for another batch size (PyTorch's CPU kernels are not batch-invariant), so allow one grey level, rarely
    for a, b in zip(together, one_by_one, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.array_equal(np.asarray(together[0]), np.asarray(generate_batched(bundle, prompts, seeds, settings)[0]))
    other_seed = generate_batched(bundle, prompts[:1], [99], settings)[0]
    diff = np.abs(np.asarray(together[0], dtype=np.int16) - np.asarray(other_seed, dtype=np.int16))
    assert (diff > 1).mean() > 0.5  # another seed is another image, not a rounding difference
