"""Image-conditioned tracks: custom style transfer and custom image editing, measured for every method alike.

A protocol's ``tracks`` (:class:`~cifc_bench.api.Track`) say which learned concepts redraw which input images,
with what prompt, strength and box. Whenever the run's schedule evaluates, every learned target concept of every
selected track (``--tracks``) redraws its inputs, and the track's metrics fill a T×C matrix per metric, like the
per-concept metrics (``None`` where a concept is not a target or not yet learned). Requests and seeds are the
same for every method; the images are cached under ``images/after_task_JJ/_<track>/<concept>/``.

The built-in metrics of a track's outputs (:class:`~cifc_bench.api.TrackImages`) are pure functions here:

- ``content_sim``: scorer cosine between each output and its input (style transfer keeps the content);
- ``box_ia``: ``ia`` of the edited region, the rest of the picture painted over (editing put the concept there);
- ``outside_psnr``, ``outside_ssim`` (torchmetrics) and ``outside_exact`` (the share of bit-identical pixels)
  outside the box: editing left the rest of the input alone.

``ia``, ``ta`` and a tier's exact per-concept metrics apply to track outputs unchanged.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench.api import GenerationRequest, ImageInit, Track, TrackImages
from cifc_bench.core.seeding import derive_seed

#: a PSNR this high means the compared pixels are identical (the MSE is floored at 1e-10 of the range squared)
PSNR_IDENTICAL = 100.0
SSIM_WINDOW = 7  # pixels: small enough for 32-pixel pictures


def track_dir(run_dir: Path, task_index: int, track: str, concept: str) -> Path:
    return Path(run_dir) / "images" / f"after_task_{task_index:02d}" / f"_{track}" / concept


def track_input_dir(run_dir: Path, track: str, concept: str) -> Path:
    """Where a run keeps the inputs of a concept's track requests (once: they are the same in every state)."""
    return Path(run_dir) / "images" / "_track_inputs" / track / concept


def track_requests(protocol: str, track: Track, concept, class_words: dict[str, str], resolution: int):
    """(request, file name, input image) of each of ``concept``'s inputs in ``track``; the same in every model
    state and for every method."""
    out = []
    for k, (_, path, prompt) in enumerate(track.cases(concept, class_words)):
        image = input_image(path, resolution)
        init = ImageInit(image=image, strength=track.strength, box=track.box)
        req = GenerationRequest(prompt=prompt, seed=derive_seed("track", protocol, track.name, concept.name, k),
                                concepts=(concept,), init=init)
        out.append((req, f"k{k:03d}.png", image))
    return out


@functools.lru_cache(maxsize=256)
def input_image(path: Path, resolution: int):
    """An input photo as the sampler and the metrics see it, decoded once per process (a 4k JPEG takes a
    large share of a second; every evaluation after every task reuses it)."""
    from cifc_bench.core.images import fit_input, load_rgb

    return fit_input(load_rgb(path), resolution)


def new_tracks(sequence, names) -> dict[str, Any] | None:
    """The tracks part of a result: each selected track's definition and an empty T×C matrix per metric."""
    if not names:
        return None
    T = len(sequence.tasks)
    out = {}
    for name in names:
        t = sequence.track(name)
        out[name] = {
            "kind": t.kind, "prompt": t.prompt, "strength": t.strength,
            "box": list(t.box.as_tuple()) if t.box else None, "inputs_per_concept": t.inputs_per_concept,
            "concepts": [c.name for c in t.targets(sequence.concepts)],
            "matrices": {m: [[None] * len(sequence.concepts) for _ in range(T)] for m in t.metrics},
        }
    return out


def track_sample(track: Track, concept, outputs, inputs, prompts, scorer, reference_features) -> TrackImages:
    """Everything a track metric may read, with the scorer features computed once for all of them."""
    from cifc_bench.evaluation.neglect import isolate_box

    class_prompts = tuple(concept.to_class_words(p) for p in prompts)
    box_features = None
    if track.box is not None:
        box_features = scorer.encode_images([isolate_box(im, track.box.as_tuple()) for im in outputs])
    return TrackImages(concept=concept, images=tuple(outputs), prompts=class_prompts,
                       features=scorer.encode_images(outputs), reference_features=reference_features,
                       text_features=scorer.encode_texts(list(class_prompts)), track=track.name,
                       inputs=tuple(inputs), input_features=scorer.encode_images(inputs), box=track.box,
                       box_features=box_features)


# ----------------------------------------------------------------------------------------------------------
# Built-in track metrics: pure functions of a TrackImages.

def content_sim(sample) -> float:
    """Metric ``content_sim``: mean scorer cosine between each output and its own input."""
    from cifc_bench.evaluation.metrics import unit_rows

    return float((unit_rows(sample.features) * unit_rows(sample.input_features)).sum(-1).mean())


def box_ia(sample) -> float:
    """Metric ``box_ia``: ``ia`` of the box region (outside painted over), against the concept's references."""
    from cifc_bench.evaluation.metrics import image_alignment

    if sample.box_features is None:
        raise ValueError(f"box_ia needs a box: track {sample.track!r} has none (give the track a `box`)")
    return image_alignment(sample.box_features, sample.reference_features)


def _outside(sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs and inputs as float arrays in [0, 1] (N, H, W, 3), and the outside-the-box mask (H, W)."""
    if sample.box is None:
        raise ValueError(f"outside-the-box metrics need a box: track {sample.track!r} has none")
    out = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in sample.images])
    inp = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) / 255 for im in sample.inputs])
    if out.shape != inp.shape:
        raise ValueError(f"outputs {out.shape[1:3]} and inputs {inp.shape[1:3]} differ in size")
    top, left, bottom, right = sample.box.pixels(*out.shape[1:3])
    outside = np.ones(out.shape[1:3], dtype=bool)
    outside[top:bottom, left:right] = False
    return out, inp, outside


def outside_exact(sample) -> float:
    """Metric ``outside_exact``: the share of pixels outside the box equal to the input's in all channels."""
    out, inp, outside = _outside(sample)
    return float((out == inp).all(-1)[:, outside].mean()) if outside.any() else math.nan


def outside_psnr(sample) -> float:
    """Metric ``outside_psnr``: PSNR (dB, torchmetrics) of the pixels outside the box against the input's, per
    image, averaged; :data:`PSNR_IDENTICAL` for identical pixels."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    out, inp, outside = _outside(sample)
    if not outside.any():
        return math.nan
    values = []
    for o, i in zip(out, inp, strict=True):
        o, i = torch.from_numpy(o[outside]), torch.from_numpy(i[outside])
        if torch.equal(o, i):
            values.append(PSNR_IDENTICAL)
        else:
            values.append(min(float(peak_signal_noise_ratio(o, i, data_range=1.0)), PSNR_IDENTICAL))
    return float(np.mean(values))


outside_psnr.display = (1.0, "dB")  # shown as it is, not ×100
outside_psnr.bounds = (0.0, 100.0)  # dB; 100 stands for identical


def outside_ssim(sample) -> float:
    """Metric ``outside_ssim``: SSIM (torchmetrics, uniform 7×7 window) averaged over the pixels whose
    window lies wholly outside the box, from the full SSIM map of each output against its input."""
    import torch
    from scipy import ndimage
    from torchmetrics.functional.image import structural_similarity_index_measure

    out, inp, outside = _outside(sample)
    if not outside.any():
        return math.nan
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    _, ssim_map = structural_similarity_index_measure(to_t(out), to_t(inp), data_range=1.0, gaussian_kernel=False,
                                                      kernel_size=SSIM_WINDOW,
                                                      return_full_image=True, reduction="none")
    per_pixel = ssim_map.mean(1).numpy()  # mean over channels: (N, H, W)
    far = ~ndimage.binary_dilation(~outside, np.ones((3, 3), bool), iterations=SSIM_WINDOW // 2)  # windows wholly outside the box
    return float(per_pixel[:, far].mean()) if far.any() else math.nan


content_sim.bounds = box_ia.bounds = outside_ssim.bounds = (-1.0, 1.0)
outside_exact.bounds = (0.0, 1.0)
