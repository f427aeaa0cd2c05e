"""What a run will cost, before it runs (``cifc-bench run ... --dry-run``).

:func:`work_plan` counts the work from the resolved settings and the protocol alone, with no model or data:
training steps per task, the images of every evaluation (concept images, multi-concept images, the base
model's calibration images) and the UNet passes of the shared sampler. :func:`measure_warmup` times a short
warm-up of the real method on the real model and device, and :func:`estimate_seconds` turns both into a wall
time. The counts follow the harness's own rules (:func:`cifc_bench.evaluation.eval_requests.evaluated_after`, the multi-concept
prompts whose concepts are all learned), so a dry run and the run agree on every image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cifc_bench.api import TaskSequence
from cifc_bench.core.config import RunSpec


@dataclass(frozen=True)
class WorkPlan:
    """The work of one run; per-task tuples are indexed by task (0 where a state is not evaluated)."""

    eval_schedule: str
    train_steps: tuple[int, ...]
    batch_size: int
    concept_images: tuple[int, ...]
    multi_images: tuple[int, ...]
    calibration_images: int  # base-model images, once per protocol, model and sampler setting (cached)
    num_inference_steps: int
    guided: bool
    track_images: tuple[int, ...] = ()  # per task: the outputs of the run's tracks (style transfer, editing)
    track_sampler_steps: int = 0  # their denoising steps in all: a strength below 1 skips the first ones
    #: UNet evaluations of the method's own sampler for every evaluation image (region synthesis, a composite of
    #: adapters), as the method declares them (``Method.unet_passes_per_step``); None: not counted (no method)
    method_unet_passes: int | None = None
    retention_images: tuple[int, ...] = ()  # per task: the generic prompts' images (retention of the base model)
    base_images: int = 0  # the base model's retention images, once per run before learning

    @property
    def total_train_steps(self) -> int:
        return sum(self.train_steps)

    def images_after(self, j: int) -> int:
        """The evaluation images of the state after task ``j``."""
        return sum(part[j] for part in (self.concept_images, self.multi_images, self.track_images,
                                        self.retention_images) if part)

    @property
    def total_images(self) -> int:
        return (sum(self.concept_images) + sum(self.multi_images) + self.calibration_images + sum(self.track_images)
                + sum(self.retention_images) + self.base_images)

    @property
    def unet_passes(self) -> int:
        """UNet evaluations of the shared sampler (two per step with guidance); methods with their own samplers
        (CIDM's region synthesis, LoRA-C's composition, Mix-of-Show's regions) make more, which the warm-up
        measures."""
        untracked = self.total_images - sum(self.track_images)
        return (untracked * self.num_inference_steps + self.track_sampler_steps) * (2 if self.guided else 1)


def work_plan(config: RunSpec, sequence: TaskSequence, budgets, eval_schedule: str | None = None,
              method_cls=None) -> WorkPlan:
    """Count the work of ``config`` (resolved) on ``sequence``; ``eval_schedule`` overrides the config's. With
    ``method_cls``, also the UNet passes of the method's own sampler, and its own training steps."""
    import dataclasses

    from cifc_bench.evaluation.eval_requests import evaluated_after

    if eval_schedule is not None:
        config = dataclasses.replace(config, eval_schedule=eval_schedule)
    n = len(sequence.tasks)
    per_concept = config.prompts_per_concept * config.images_per_prompt
    concept_images, multi_images, track_images = [], [], []
    retention = len(sequence.retention_prompts) * sequence.retention_images
    tracks = [t for t in sequence.tracks if t.name in (config.tracks or ())]
    track_steps = 0
    for j in range(n):
        if not evaluated_after(config, j, n):
            concept_images.append(0)
            multi_images.append(0)
            track_images.append(0)
            continue
        learned = {c.name for c in sequence.concepts[: j + 1]}
        concept_images.append(per_concept * len(learned))
        ready = [m for m in sequence.multi_concept_prompts if set(m.concepts) <= learned]
        multi_images.append(config.multi_images_per_prompt * len(ready))
        count = 0
        for t in tracks:
            for c in t.targets(sequence.concepts[: j + 1]):
                # without the data the inputs are unknown: count what the track asks for
                k = min(t.inputs_per_concept, sum(name != c.name for name, _ in t.inputs)) if t.inputs \
                    else t.inputs_per_concept
                count += k
                track_steps += k * min(int(config.num_inference_steps * t.strength), config.num_inference_steps)
        track_images.append(count)
    calibration = config.calibration_images * len(sequence.multi_concept_prompts)
    passes = None if method_cls is None else _method_passes(config, sequence, method_cls, tracks)
    train_steps = tuple(b["steps"] for b in budgets)
    if method_cls is not None:
        train_steps = method_cls.optimisation_steps(train_steps, config.method_args or {})
    return WorkPlan(eval_schedule=config.eval_schedule, train_steps=train_steps,
                    batch_size=config.batch_size, concept_images=tuple(concept_images),
                    multi_images=tuple(multi_images), calibration_images=calibration,
                    num_inference_steps=config.num_inference_steps, guided=config.guidance_scale != 1.0,
                    track_images=tuple(track_images), track_sampler_steps=track_steps,
                    method_unet_passes=passes,
                    retention_images=tuple(retention if evaluated_after(config, j, n) else 0 for j in range(n)),
                    base_images=retention)


def _method_passes(config: RunSpec, sequence: TaskSequence, method_cls, tracks) -> int:
    """The method's UNet evaluations over every evaluated state: each request's passes per step times its
    sampler steps (a track's input skips the first ``1 - strength`` of them)."""
    from cifc_bench.api import GenerationRequest
    from cifc_bench.evaluation.eval_requests import (
        concept_requests,
        evaluated_after,
        multi_requests,
        retention_requests,
    )

    n, steps, guided = len(sequence.tasks), config.num_inference_steps, config.guidance_scale > 1.0
    total = 0
    for j in range(n):
        if not evaluated_after(config, j, n):
            continue
        learned = sequence.concepts[: j + 1]
        names = {c.name for c in learned}
        requests = [r for c in learned for r, _ in concept_requests(sequence.name, c, config.prompts_per_concept,
                                                                     config.images_per_prompt)]
        requests += [r for q, m in enumerate(sequence.multi_concept_prompts) if set(m.concepts) <= names
                     for r, _ in multi_requests(sequence, q, config.multi_images_per_prompt)]
        requests += [r for r, _ in retention_requests(sequence)]
        total += sum(method_cls.unet_passes_per_step(r, guided, j + 1, config.method_args) for r in requests) * steps
        for t in tracks:
            for c in t.targets(learned):
                k = min(t.inputs_per_concept, sum(name != c.name for name, _ in t.inputs)) if t.inputs \
                    else t.inputs_per_concept
                plain = GenerationRequest(prompt=t.prompt, seed=0, concepts=(c,))
                total += k * min(int(steps * t.strength), steps) * method_cls.unet_passes_per_step(
                    plain, guided, j + 1, config.method_args)
    return total


def prior_image_seconds(config: RunSpec, step_seconds: float) -> float:
    """An evaluation image's seconds before any evaluation is timed, from a training step's seconds and their
    per-sample UNet passes: an image takes ``num_inference_steps`` passes (twice under guidance), a training step
    ``batch_size`` samples forward and backward (about three forward passes each). On ``synth10`` this says 1.67
    steps an image; 1.8 was measured (0.34 s against 0.19 s, one thread)."""
    passes = config.num_inference_steps * (2 if (config.guidance_scale or 0) > 1 else 1)
    return step_seconds * passes / (3 * max(config.batch_size or 1, 1))


def remaining_seconds(plan: WorkPlan, done: int, step_seconds: float, image_seconds: float,
                      overlapped: bool = False) -> float:
    """Seconds left once ``done`` tasks are trained, from the work still to do at the rates measured so far:
    training steps at ``step_seconds`` and evaluation images at ``image_seconds``. The evaluation grows with the
    task index (every learned concept is evaluated again), so extrapolating the tasks done so far underestimates
    a run. ``overlapped``: the state after task k is evaluated while task k+1 trains (``eval_workers`` 1), and
    the state after task ``done - 1`` is still to be evaluated; else every trained state is evaluated."""
    n = len(plan.train_steps)
    train = [plan.train_steps[k] * step_seconds for k in range(n)]
    images = [plan.images_after(k) for k in range(n)]
    evaluate = [images[k] * image_seconds for k in range(n)]
    if not overlapped:
        return float(sum(train[done:]) + sum(evaluate[done:]))
    # task k trains beside the evaluation of state k - 1; the last state's evaluation runs alone
    left = sum(max(train[k], evaluate[k - 1] if k > 0 else 0.0) for k in range(done, n))
    return float(left + (evaluate[n - 1] if done >= 1 else 0.0))


@dataclass(frozen=True)
class Warmup:
    """Seconds measured on the run's model and device: per training step, per task beyond its steps (what a
    method does once per task: class images, a Fisher estimate, a fusion), per image of each kind."""

    step: float
    per_task: float
    concept_image: float
    multi_image: float | None
    base_image: float
    steps_measured: int


def measure_warmup(ctx, steps: int = 4) -> Warmup:
    """Time the method on task 1: ``learn_task`` with 1 and with ``1 + steps`` steps (fresh instances on fresh
    bundles; the difference is the per-step time, the rest the per-task cost), then one evaluation batch of task 1's concept
    images, of the multi-concept prompts' images, and of base-model images. Nothing is written."""

    from cifc_bench.core.seeding import train_seed
    from cifc_bench.diffusion.sampling import generate_batched
    from cifc_bench.evaluation.eval_requests import concept_requests, multi_requests
    from cifc_bench.run.setup import build_method, fresh_bundle

    cfg, seq = ctx.config, ctx.sequence
    settings = ctx.settings
    task = seq.tasks[0]
    concept = task.concepts[0]
    base_requests = [r for r, _ in concept_requests(seq.name, concept, cfg.prompts_per_concept, cfg.images_per_prompt)]
    base_requests = (base_requests * settings.batch_size)[: settings.batch_size]
    with ctx.precision():
        base = _timed(lambda: generate_batched(ctx.method.bundle, [concept.to_class_words(r.prompt) for r in base_requests],
                                               [r.seed for r in base_requests], settings)) / len(base_requests)
    seconds = []
    method = ctx.method
    for k, n_steps in enumerate((1, 1 + steps)):
        if k:  # a fresh instance on a fresh bundle (methods install adapters into theirs), not a continuation
            method = build_method(type(ctx.method), fresh_bundle(cfg)[0], cfg)
        budget = cfg.budget({"steps": n_steps, "lr_scale": 1.0}, train_seed(cfg.seed, 0))
        seconds.append(_timed(lambda m=method, b=budget: ctx.learn(task, b, m)))
    step = max((seconds[1] - seconds[0]) / steps, 0.0)
    per_task = max(seconds[0] - step, 0.0)
    # an image's cost includes scoring it (the scorer's features), as in the run
    concept_image = _timed(lambda: ctx.scorer.encode_images(ctx.generate(base_requests, method))) / len(base_requests)
    multi_image = None
    ready = [q for q, m in enumerate(seq.multi_concept_prompts) if set(m.concepts) <= {concept.name}]
    if seq.multi_concept_prompts:
        # no multi-concept prompt is learned after task 1; time the first one's sampler on task 1's model anyway
        q = ready[0] if ready else 0
        requests = [r for r, _ in multi_requests(seq, q, settings.batch_size)]
        multi_image = _timed(lambda: ctx.scorer.encode_images(ctx.generate(requests, method))) / len(requests)
    return Warmup(step=step, per_task=per_task, concept_image=concept_image, multi_image=multi_image,
                  base_image=base, steps_measured=steps)


def _timed(fn) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def warmup_from_bench(bench: dict, config: RunSpec, method_cls) -> Warmup | None:
    """The rates of ``cifc-bench bench``'s figures (one device's JSON) for ``config``, instead of a warm-up: the
    concept image of the run's precision (compiled or not), scaled to its sampler steps; a multi-concept image at
    the method's UNet passes for two boxes against the shared sampler's; the method's training step, scaled to
    the run's batch. None when the bench does not fit the run (another resolution, precision or method)."""
    from cifc_bench.api import Box, GenerationRequest

    settings = bench.get("settings") or {}
    figures = (bench.get("precisions") or {}).get(f"{config.dtype}{'-compiled' if config.compile else ''}")
    training = (bench.get("training") or {}).get(config.method) or {}
    if settings.get("resolution") != config.resolution or not figures or "step_s" not in training:
        return None
    guided = (config.guidance_scale or 0) > 1
    scale = config.num_inference_steps / max(int(settings.get("steps") or 1), 1)
    concept = figures["concept_image_s"] * scale
    boxed = GenerationRequest(prompt="", seed=0, boxes=(Box(0.0, 0.0, 1.0, 0.5), Box(0.0, 0.5, 1.0, 1.0)))
    passes = method_cls.unet_passes_per_step(boxed, guided, 1, config.method_args) / (2 if guided else 1)
    step = training["step_s"] * config.batch_size / max(int(settings.get("train_batch") or 1), 1)
    return Warmup(step=step, per_task=max(training.get("per_task_s", 0.0) - step, 0.0), concept_image=concept,
                  multi_image=concept * passes, base_image=concept, steps_measured=int(settings.get("train_steps") or 0))


def latest_bench(device_name: str, folder: Path = Path("results") / "gpu-check") -> tuple[Path, dict] | None:
    """The newest ``cifc-bench bench`` JSON (not a smoke run's) measured on a device of this name, if any."""
    import json

    for path in sorted(folder.glob("*-bench.json"), reverse=True):
        try:
            bench = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (bench.get("device") or {}).get("name") == device_name:
            return path, bench
    return None


def estimate_seconds(plan: WorkPlan, warm: Warmup) -> float:
    """Wall time of ``plan`` at the warm-up's rates (training, concept, multi-concept and base images)."""
    multi = warm.multi_image if warm.multi_image is not None else warm.concept_image
    return (plan.total_train_steps * warm.step + len(plan.train_steps) * warm.per_task
            + (sum(plan.concept_images) + sum(plan.retention_images)) * warm.concept_image
            + sum(plan.multi_images) * multi + (plan.calibration_images + plan.base_images) * warm.base_image
            + plan.track_sampler_steps / max(plan.num_inference_steps, 1) * warm.concept_image)


def describe(plan: WorkPlan) -> list[str]:
    """The plan as lines for a person."""
    evaluated = [j + 1 for j, n in enumerate(plan.concept_images) if n]
    return [
        f"training: {plan.total_train_steps:,} steps over {len(plan.train_steps)} tasks "
        f"(per task {', '.join(map(str, plan.train_steps))}; batch {plan.batch_size}: "
        f"{plan.total_train_steps * plan.batch_size:,} samples)",
        f"evaluation ({plan.eval_schedule}, after task{'s' if len(evaluated) > 1 else ''} "
        f"{_ranges(evaluated)}): {sum(plan.concept_images):,} concept images "
        f"(per evaluated state {', '.join(str(n) for n in plan.concept_images if n)}), "
        f"{sum(plan.multi_images):,} multi-concept images, {plan.calibration_images:,} base-model calibration images "
        "(once, then cached)" + (f", {sum(plan.track_images):,} track images (style transfer, editing; "
                                 f"{plan.track_sampler_steps:,} sampler steps)" if sum(plan.track_images) else "")
        + (f", {sum(plan.retention_images):,} retention images (generic prompts) and the base model's "
           f"{plan.base_images:,}" if plan.base_images else ""),
        f"sampler: {plan.num_inference_steps} steps, {'2 UNet passes per step (guidance)' if plan.guided else '1 UNet pass per step'}"
        f": {plan.total_images:,} images, {plan.unet_passes:,} UNet passes"
        + (f"; the method's own sampler (region synthesis, adapter composites) makes {plan.method_unet_passes:,} for "
           f"the evaluation images" if plan.method_unet_passes is not None else ""),
    ]


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}–{values[-1]}"
    return ", ".join(map(str, values))


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
