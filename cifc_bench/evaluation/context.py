"""What one run has loaded, as evaluation reads it: the bound protocol, the method, the scorer, the metric
functions and the run folder. :mod:`cifc_bench.run.setup` builds it; rescoring builds one without a method."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifc_bench.api import GenerationSettings, Method, TaskSequence
from cifc_bench.core.config import RunSpec
from cifc_bench.core.distributed import SINGLE, Ranks

METRICS = ("ia", "ta")  # per-concept metrics of a protocol that names none under ``defaults.metrics``


DINO_METRIC = "ia_dino"  # added when the run has a DINO model (``--dino``)


@dataclass
class RunContext:
    """What one run has loaded: the bound protocol, the method, the scorer and the run directory."""

    config: RunSpec
    sequence: TaskSequence
    method: Method | None  # None when rescoring a run's saved images
    scorer: Any
    run_dir: Path
    metrics: tuple[str, ...] = METRICS
    dino: Any = None  # the DINO encoder behind ia_dino, when the run asks for it
    encoders: dict[str, Any] = dataclasses.field(default_factory=dict)  # metric -> its image encoder (--image-encoders)
    calibration: dict[str, Any] | None = None  # presence thresholds of the neglect rate (None: no multi prompts)
    model_fingerprint: str = ""  # of the base model's weights, taken before the method could change them
    metric_fns: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> (ConceptImages) -> float
    #: exact neglect checks: name -> (image, Concept, Box | None) -> bool; each gives a neglect matrix of its name
    presence_fns: dict[str, Any] = dataclasses.field(default_factory=dict)
    budgets: tuple[dict[str, Any], ...] = ()  # per task: the schedule's steps and lr_scale
    ranks: Ranks = SINGLE  # this process's place in a run launched on many processes

    @property
    def settings(self) -> GenerationSettings:
        return self.config.generation()

    def precision(self):
        """The autocast context of the run's ``dtype``: the one place a run enters autocast (the calibration,
        and every ``learn_task`` and ``generate`` through :meth:`learn` and :meth:`generate`)."""
        from cifc_bench.core.precision import autocast

        return autocast(self.config.device, self.config.dtype)

    def learn(self, task, budget, method: Method | None = None) -> None:
        """``method.learn_task`` (the run's method by default) at the run's precision."""
        with self.precision():
            (method or self.method).learn_task(task, budget)

    def generate(self, requests, method: Method | None = None) -> list:
        """``method.generate`` (the run's method by default) under the run's sampler settings and precision."""
        with self.precision():
            return (method or self.method).generate(list(requests), self.settings)
