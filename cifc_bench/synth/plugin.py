"""The synthetic tier's components, registered through entry points like any third-party plugin
(``pyproject.toml``): the ``synth`` base model and scorer, the exact ``context_acc`` metric, the ``synth10``
protocol (``synth10.yaml`` beside this file) and the ``synth`` sub-command (:mod:`.cli`). The core never
imports this package; deleting it leaves every other part of the suite working."""

from __future__ import annotations

from pathlib import Path


def base_model() -> Path:
    """The pretrained 32×32 base model's diffusers folder (model ``synth``)."""
    from cifc_bench.synth import weights_dir

    return weights_dir() / "base"


def scorer(device: str = "cpu"):
    """The world's contrastive open_clip scorer (scorer ``synth``), trained by ``cifc-bench synth pretrain``."""
    from cifc_bench.scoring import open_clip_scorer
    from cifc_bench.synth import weights_dir
    from cifc_bench.synth.pretrain import scorer_model

    return open_clip_scorer("synth", scorer_model(), str(weights_dir() / "scorer.safetensors"), device)


def context_acc(sample) -> float:
    """Metric ``context_acc``: the fraction of prompted attributes (background, position, style) the images
    satisfy, judged by the world's exact checks."""
    from cifc_bench.synth.checks import context_accuracy

    return context_accuracy(sample.images, sample.prompts)
