"""Image-conditioned generation in the shared sampler: SDEdit style transfer and blended editing, for every
method (issue 25), and the ``generate`` flags that drive them."""

import numpy as np
import pytest
import torch
from PIL import Image

from cifc_bench.api import Box, GenerationRequest, GenerationSettings, ImageInit, TrainBudget
from cifc_bench.core.registry import METHODS, list_plugins, load_method
from cifc_bench.diffusion.models import load_bundle
from cifc_bench.testing import QUICK_METHOD_ARGS

SETTINGS = GenerationSettings(resolution=32, num_inference_steps=10, guidance_scale=7.5, batch_size=4)
BOX = Box(0.25, 0.25, 0.75, 0.5)


@pytest.fixture(scope="module")
def source():
    """A 40 px noise photo: the sampler resizes it to 32 px, and no denoiser could draw it by chance."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))


def outside(box: Box, size: int) -> np.ndarray:
    top, left, bottom, right = box.pixels(size, size)
    mask = np.ones((size, size), bool)
    mask[top:bottom, left:right] = False
    return mask


def base_method():
    from cifc_bench.methods.zero_shot import ZeroShot

    return ZeroShot(load_bundle("tiny-random"))


def test_editing_keeps_every_pixel_outside_the_box_and_redraws_inside(source):
    images = base_method().generate([GenerationRequest(prompt="a dog", seed=k, init=ImageInit(source, box=BOX))
                                     for k in range(3)], SETTINGS)
    expected = np.asarray(source.resize((32, 32)))
    out = outside(BOX, 32)
    for image in images:
        pixels = np.asarray(image)
        assert np.array_equal(pixels[out], expected[out]), "editing must keep the input outside the box, bit for bit"
        assert np.abs(pixels[~out].astype(int) - expected[~out]).mean() > 10, "the box must be redrawn"
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # seeds still matter inside


def test_style_transfer_at_strength_near_zero_returns_the_input_through_the_codec(source):
    from cifc_bench.diffusion.sampling import decode, encode_images

    method = base_method()
    image = method.generate([GenerationRequest(prompt="a dog", seed=1, init=ImageInit(source, strength=0.01))],
                            SETTINGS)[0]
    codec = decode(method.bundle, encode_images(method.bundle, [source.resize((32, 32))]))[0]
    assert np.array_equal(np.asarray(image), np.asarray(codec))
    redrawn = method.generate([GenerationRequest(prompt="a dog", seed=1, init=ImageInit(source, strength=0.6))],
                              SETTINGS)[0]
    assert not np.array_equal(np.asarray(redrawn), np.asarray(codec))


def test_strength_follows_diffusers_img2img_timesteps():
    from cifc_bench.diffusion.sampling import Trajectory

    bundle = load_bundle("tiny-random")
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    full = Trajectory(bundle, [0], SETTINGS).timesteps
    for strength, kept in ((1.0, 10), (0.6, 6), (0.25, 2), (0.05, 0)):
        t = Trajectory(bundle, [0], SETTINGS, [ImageInit(image, strength)]).timesteps
        assert len(t) == kept and torch.equal(t, full[len(full) - kept :])


def test_plain_requests_beside_conditioned_ones_draw_what_they_draw_alone(source):
    method = base_method()
    alone = method.generate([GenerationRequest(prompt="a dog", seed=1)], SETTINGS)[0]
    mixed = method.generate([GenerationRequest(prompt="a dog", seed=1),
                             GenerationRequest(prompt="a dog", seed=2, init=ImageInit(source, 0.5)),
                             GenerationRequest(prompt="a dog", seed=1)], SETTINGS)
    assert np.array_equal(np.asarray(mixed[0]), np.asarray(alone)) and np.array_equal(np.asarray(mixed[2]),
                                                                                        np.asarray(alone))


@pytest.mark.parametrize("name", sorted(list_plugins(METHODS)))
def test_every_method_edits_inside_the_box_only(name, tiny_protocol, source):
    from cifc_bench.core.protocol import load_protocol

    seq = load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))
    torch.manual_seed(0)
    method = load_method(name)(load_bundle("tiny-random"), **QUICK_METHOD_ARGS.get(name, {}))
    for task in seq.tasks[:2]:
        method.learn_task(task, TrainBudget(steps=2, batch_size=2, resolution=32, seed=task.index))
    c0, c1 = seq.concepts[:2]
    mc = seq.multi_concept_prompts[0]
    settings = GenerationSettings(resolution=32, num_inference_steps=3, guidance_scale=7.5, batch_size=2)
    requests = [GenerationRequest(prompt=c0.eval_prompts[0], seed=1, concepts=(c0,), init=ImageInit(source, box=BOX)),
                GenerationRequest(prompt=mc.prompt, seed=2, concepts=(c0, c1), boxes=mc.boxes,  # region samplers
                                  init=ImageInit(source, box=BOX)),
                GenerationRequest(prompt=c1.eval_prompts[0], seed=3, concepts=(c1,), init=ImageInit(source, 0.01))]
    images = method.generate(requests, settings)
    expected, out = np.asarray(source.resize((32, 32))), outside(BOX, 32)
    for image in images[:2]:
        assert np.array_equal(np.asarray(image)[out], expected[out]), f"{name} changed pixels outside the box"
    from cifc_bench.diffusion.sampling import decode, encode_images

    with torch.no_grad():  # strength near 0: the input through the codec, never a new image
        through = decode(method.bundle, encode_images(method.bundle, [source.resize((32, 32))]))[0]
    assert np.array_equal(np.asarray(images[2]), np.asarray(through)), f"{name} ignored the input image"


def test_image_init_errors_name_the_value_and_the_fix(tmp_path, source):
    from cifc_bench.run.generate import GenerateError, image_init

    path = tmp_path / "in.png"
    source.save(path)
    with pytest.raises(GenerateError, match=r"--init-image .*nope.png: no such file"):
        image_init(tmp_path / "nope.png", 0.5)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(GenerateError, match=r"--init-image .*bad.png: not a readable image"):
        image_init(tmp_path / "bad.png", 0.5)
    for strength in (0.0, 1.5, -0.2):
        with pytest.raises(GenerateError, match=rf"--strength {strength}: strength {strength} is outside \(0, 1\]"):
            image_init(path, strength)
    with pytest.raises(GenerateError, match=r"--mask-box '0.2,0.2,1.4,0.6': write y0,x0,y1,x1"):
        image_init(path, mask_box="0.2,0.2,1.4,0.6")
    with pytest.raises(GenerateError, match=r"--mask-box 'a,b': write y0,x0,y1,x1"):
        image_init(path, mask_box="a,b")
    with pytest.raises(GenerateError, match=r"give --strength S in \(0, 1\]"):
        image_init(path)
    with pytest.raises(GenerateError, match=r"--strength needs --init-image"):
        image_init(None, 0.5)
    assert image_init(path, mask_box="0.1,0.1,0.5,0.5").strength == 1.0
    assert image_init(None) is None
