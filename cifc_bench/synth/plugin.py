"""The synthetic tier's components, registered through entry points like any third-party plugin
(``pyproject.toml``): the ``synth`` base model and scorer, the exact ``context_acc`` and ``identity_acc``
metrics, the exact ``cnr_exact`` presence check, the ``synth10`` protocol (``synth10.yaml`` beside this file) and the ``synth`` sub-command (:mod:`.cli`). The core never
imports this package; deleting it leaves every other part of the suite working."""

from __future__ import annotations

from pathlib import Path


def base_model() -> Path:
    """The pretrained 32×32 base model's diffusers folder (model ``synth``)."""
    from cifc_bench.synth import weights_dir

    return weights_dir() / "base"


def scorer(device: str = "cpu"):
    """The world's contrastive open_clip scorer (scorer ``synth``), trained by ``cifc-bench synth pretrain``."""
    from cifc_bench.diffusion.scoring import open_clip_scorer
    from cifc_bench.synth import weights_dir
    from cifc_bench.synth.pretrain_models import scorer_model

    return open_clip_scorer("synth", scorer_model(), str(weights_dir() / "scorer.safetensors"), device)


def context_acc(sample) -> float:
    """Metric ``context_acc``: the fraction of prompted attributes (background, position, style) the images
    satisfy, judged by the world's exact checks."""
    from cifc_bench.synth.base_report import context_accuracy

    return context_accuracy(sample.images, sample.prompts)


def class_acc(sample) -> float:
    """Metric ``class_acc``: the fraction of images whose drawn silhouette is the class their prompt names (a
    retention metric of generic prompts; NaN when no prompt names one of the world's classes)."""
    import numpy as np

    from cifc_bench.synth import world
    from cifc_bench.synth.checks import detect_shape

    hits = []
    for image, prompt in zip(sample.images, sample.prompts, strict=True):
        named = [s for s in world.SHAPES if s in prompt.split()]
        if named:
            hits.append(detect_shape(np.asarray(image.convert("RGB"))) == named[0])
    return float(np.mean(hits)) if hits else float("nan")


def exact_target(concept):
    """What the exact checks look for in ``concept``: its generator fields as a target (shape and colours, or style)."""
    from cifc_bench.synth.checks import concept_target

    if not concept.generator:
        raise ValueError(f"concept {concept.name!r} has no `generator` field in its protocol: the exact checks of the "
                         "synthetic world need to know what it is (its shape, colours, pattern and mark, or its style)")
    return concept_target(concept.generator)


def identity_acc(sample) -> float:
    """Metric ``identity_acc``: the fraction of the concept's identity attributes its images show at its place
    (silhouette, fill, and second colour with the right fill; a style's palette and texture), by exact checks."""
    from cifc_bench.synth.checks import identity_acc as exact

    return exact(sample.images, sample.prompts, exact_target(sample.concept))


def cnr_exact(image, concept, box) -> bool:
    """Presence check ``cnr_exact``: the concept's fill and pattern colours cover at least half their expected
    pixels inside its box (a style: its palette and texture show)."""
    import numpy as np

    from cifc_bench.synth.checks import present

    return present(np.asarray(image.convert("RGB")), exact_target(concept), box)


def cnr_drawn(image, concept, box) -> bool:
    """Presence check ``cnr_drawn``: an object of the concept's silhouette is drawn inside its box, whatever its
    colours (a style: as ``cnr_exact``). Beside ``cnr_exact`` it tells a concept left out of the picture from
    one drawn without its identity."""
    import numpy as np

    from cifc_bench.synth.checks import drawn

    return drawn(np.asarray(image.convert("RGB")), exact_target(concept), box)


def content_exact(sample) -> float:
    """Track metric ``content_exact`` (style transfer): the fraction of the input's content the outputs keep,
    by exact checks against the personal style's own rendering of each input (object count, position and
    silhouette); NaN when no input shows an object under the style."""
    import numpy as np

    from cifc_bench.synth.checks import content_preserved

    style = exact_target(sample.concept)
    if not isinstance(style, str):
        raise ValueError(f"content_exact scores style transfer: {sample.concept.name!r} is not a personal style")
    checks = [content_preserved(np.asarray(o.convert("RGB")), np.asarray(i.convert("RGB")), style)
              for o, i in zip(sample.images, sample.inputs, strict=True)]
    scores = [np.mean(list(c.values())) for c in checks if c is not None]
    return float(np.mean(scores)) if scores else float("nan")


def box_identity_acc(sample) -> float:
    """Track metric ``box_identity_acc`` (editing): ``identity_acc`` of the edit box alone, everything outside it
    painted in the box edge's median colour, so the input's own object cannot count."""
    from cifc_bench.evaluation.neglect import isolate_box
    from cifc_bench.synth.checks import identity_acc as exact

    if sample.box is None:
        raise ValueError(f"box_identity_acc needs a box: track {sample.track!r} has none")
    images = [isolate_box(im, sample.box.as_tuple()) for im in sample.images]
    return exact(images, sample.prompts, exact_target(sample.concept))


context_acc.bounds = identity_acc.bounds = content_exact.bounds = box_identity_acc.bounds = (0.0, 1.0)
