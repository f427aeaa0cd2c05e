"""One home for run settings: every setting has one name, from the command line to the training loop.

A setting called ``x_y`` is the flag ``--x-y``, the key ``x_y`` of a ``--config`` YAML file and the key ``x_y``
of a protocol's ``defaults``. :func:`resolve` applies one precedence, highest first:

1. the command line (or the keyword arguments of :class:`RunSpec`),
2. the ``--config`` YAML file,
3. the protocol's ``defaults`` (and ``defaults.method_args.<method>``, merged key by key under the run's own),
4. :data:`FALLBACKS`, SD-1.5's evaluation settings.

A resolved :class:`RunSpec` hands the harness what it imposes on every method: :meth:`RunSpec.budget` (per task,
from the schedule) and :meth:`RunSpec.generation`::

    spec = resolve({"method": "cidm", "steps": 2}, protocol_defaults=load_protocol("cifc10").defaults)
    spec.steps, spec.schedule, spec.generation().batch_size   # 2, "shared", 8
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cifc_bench.core.task_order import order_problem

EVAL_SCHEDULES = ("each-task", "final")
DTYPES = ("fp32", "bf16", "fp16")  # the frozen weights' precision; trainable parameters stay fp32
SHARED = "shared"  # the training schedule that gives every task ``steps`` steps at the method's own rates

#: The last word on every setting a protocol may leave unset (SD-1.5's evaluation, as in the CIDM paper).
FALLBACKS: dict[str, Any] = {
    "steps": 800, "batch_size": 2, "prompts_per_concept": 20, "images_per_prompt": 50, "resolution": 512,
    "num_inference_steps": 50, "guidance_scale": 7.5, "negative_prompt": "", "eval_batch_size": 8,
    "dino": "none", "multi_images_per_prompt": 8, "calibration_images": 100, "eval_workers": 0,
}
#: Settings a protocol's ``defaults`` may give, beside these keys of its own.
PROTOCOL_ONLY = ("metrics", "presence", "method_args", "schedule")
#: Settings that only the run gives: they say what to run, not how.
RUN_ONLY = ("method", "protocol", "data_dir", "eval_schedule", "seed", "device", "dtype", "tracks", "log_to",
            "compile", "task_order")
_WHOLE = ("steps", "batch_size", "prompts_per_concept", "images_per_prompt", "resolution", "num_inference_steps",
          "eval_batch_size", "multi_images_per_prompt", "calibration_images", "retention_prompts")
AUTO = "auto"  # eval_batch_size: the largest batch the device fits, chosen when the run starts (the CUDA default)


class ConfigError(ValueError):
    """A run setting is invalid; the message names the setting, the value and the fix."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run. ``None`` fields are unset: :func:`resolve` fills them."""

    method: str = "finetune"
    protocol: str | None = None  # None: the installed protocol marked `default: true`
    method_args: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str | None = None
    scorer: str | None = None
    steps: int | None = None  # training steps of every task, under the shared schedule
    schedule: str | None = None  # "shared" or a protocol's named per-task schedule
    batch_size: int | None = None  # training batch size
    prompts_per_concept: int | None = None
    images_per_prompt: int | None = None
    resolution: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    eval_schedule: str = "each-task"
    eval_batch_size: int | str | None = None  # images generated per batch; "auto": the largest the device fits
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None  # frozen weights in fp32, bf16 or fp16 under autocast (None: bf16 on CUDA, else fp32)
    dino: str | None = None  # DINO model for ia_dino ("none": skip the metric)
    #: more image encoders, each giving its own ia_* metric (dinov2-vits14 -> ia_dinov2, dreamsim -> ia_dreamsim)
    image_encoders: tuple[str, ...] | None = None
    multi_images_per_prompt: int | None = None  # images per multi-concept prompt, for the neglect rate
    calibration_images: int | None = None  # base-model class-word images per concept for presence thresholds
    #: the protocol's tracks to evaluate (style transfer, editing), whenever the schedule evaluates; None: all
    tracks: tuple[str, ...] | None = None
    #: 1: a second process (one thread) generates the evaluation images of the state after task j while task j+1
    #: trains, byte-identical to generating them in the run's process at one thread; 0: one process does both
    eval_workers: int | None = None
    #: experiment loggers (entry points of ``cifc_bench.loggers``, e.g. tensorboard): training losses and each
    #: evaluation's summaries; None or empty: none, and nothing extra is written
    log_to: tuple[str, ...] | None = None
    #: compile the UNet and the VAE decoder (``torch.compile``, in place: names and states unchanged; channels_last
    #: on CUDA); images equal eager's within float tolerance, not bit for bit, so it is part of the run's identity
    compile: bool = False
    #: the order the run learns the protocol's concepts in: protocol, reversed or random:SEED (core/task_order)
    task_order: str = "protocol"
    #: retention of the base model on the first N of the protocol's generic prompts (None: all of them)
    retention_prompts: int | None = None

    def __post_init__(self) -> None:
        problems = check_values(dataclasses.asdict(self))
        if problems:
            raise ConfigError(problems[0])
        for key in ("tracks", "log_to", "image_encoders"):  # a list from a result file or a YAML file: one type
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def resolved(self, defaults: Mapping[str, Any], method_names: tuple[str, ...] = ()) -> RunSpec:
        """Fill unset fields from a protocol's ``defaults``, then from :data:`FALLBACKS`.

        ``defaults.method_args`` and ``defaults.schedule`` are looked up under the run's ``method`` and under
        ``method_names``, the registered names of the method's class (so ``--method pkg.mod:Class`` of a
        registered class gets that name's protocol arguments too). A typed ``steps`` means the shared schedule.
        """
        names = (self.method, *method_names)
        updates: dict[str, Any] = {}
        for key, fallback in FALLBACKS.items():
            if getattr(self, key) is None:
                updates[key] = defaults.get(key, fallback)
        if self.eval_batch_size is None and "eval_batch_size" not in defaults and str(self.device).startswith("cuda"):
            updates["eval_batch_size"] = AUTO  # on a GPU the largest batch that fits, unless the protocol fixes one
        for key in ("model", "scorer", "image_encoders", "retention_prompts"):
            if getattr(self, key) is None:
                updates[key] = defaults.get(key)
        if self.dtype is None:
            updates["dtype"] = default_dtype(self.device)
        if self.schedule is None:
            chosen = defaults.get("schedule") or {}
            updates["schedule"] = SHARED if self.steps is not None else next(
                (chosen[n] for n in names if n in chosen), SHARED)
        protocol_args = next((a for n in names if (a := (defaults.get("method_args") or {}).get(n))), {})
        if protocol_args:
            updates["method_args"] = {**protocol_args, **self.method_args}
        return dataclasses.replace(self, **updates)

    def budget(self, task_budget: Mapping[str, Any], seed: int):
        """The :class:`~cifc_bench.api.TrainBudget` of one task: its schedule entry, the batch and resolution."""
        from cifc_bench.api import TrainBudget

        return TrainBudget(task_budget["steps"], self.batch_size, self.resolution, seed,
                           lr_scale=task_budget["lr_scale"])

    def generation(self):
        """The :class:`~cifc_bench.api.GenerationSettings` the harness imposes on every method."""
        from cifc_bench.api import GenerationSettings

        return GenerationSettings(resolution=self.resolution, num_inference_steps=self.num_inference_steps,
                                  guidance_scale=self.guidance_scale, negative_prompt=self.negative_prompt,
                                  batch_size=self.eval_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "run settings") -> RunSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def parse_value(text: str) -> Any:
    """A value typed on the command line (``rank=4``, ``lr=1e-4``, ``variant=paper``), read as YAML, with the
    numbers YAML 1.1 leaves as strings (``1e6``, ``1e-4``) made numbers."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def default_device() -> str:
    """The device a run uses when none is given: CUDA when a GPU is visible, else the CPU (the one place this is
    decided)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | None) -> str:
    """bf16 on CUDA (SD-1.5 loses nothing visible in bf16 and samples about twice as fast), fp32 elsewhere:
    a CPU's bf16 kernels are slower than its fp32 ones, and the CPU tier's numbers were made in fp32."""
    return "bf16" if str(device or "").startswith("cuda") else "fp32"


def setting_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(RunSpec))


def check_values(values: Mapping[str, Any], where: str = "") -> list[str]:
    """Every wrong value among ``values`` (setting -> value), one sentence each naming the setting as a flag
    (or as ``where`` + key, for a file) and the fix; ``None`` means unset and is always fine."""
    problems = []

    def name(key):
        return f"{where}{key}" if where else f"--{key.replace('_', '-')}"

    for key in _WHOLE:
        v = values.get(key)
        if key == "eval_batch_size" and v == AUTO:
            continue
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "steps" else 1)):
            problems.append(f"{name(key)} {v!r}: give a whole number {'>= 0' if key == 'steps' else '>= 1'}"
                            + (f" or {AUTO!r}" if key == "eval_batch_size" else ""))
    v = values.get("eval_workers")
    if v is not None and (isinstance(v, bool) or v not in (0, 1)):
        problems.append(f"{name('eval_workers')} {v!r}: give 0 (evaluate in the run's process) or 1 (a second "
                        "process generates each state's images while the next task trains)")
    v = values.get("resolution")
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 8:
        problems.append(f"{name('resolution')} {v}: give a multiple of 8 (e.g. 32, 256, 512)")
    v = values.get("guidance_scale")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
        problems.append(f"{name('guidance_scale')} {v!r}: give a number >= 0 (1 switches guidance off)")
    for key in ("model", "scorer", "dino", "negative_prompt", "schedule", "data_dir", "device"):
        v = values.get(key)
        if v is not None and not isinstance(v, str):
            problems.append(f"{name(key)} {v!r}: give a string")
    v = values.get("eval_schedule")
    if v is not None and v not in EVAL_SCHEDULES:
        problems.append(f"{name('eval_schedule')} {v!r}: use one of {EVAL_SCHEDULES}")
    v = values.get("dtype")
    if v is not None and v not in DTYPES:
        problems.append(f"{name('dtype')} {v!r}: use one of {DTYPES} (default: bf16 on CUDA, fp32 on CPU)")
    v = values.get("tracks")
    if v is not None and (isinstance(v, str) or not all(isinstance(t, str) for t in v)):
        problems.append(f"{name('tracks')} {v!r}: give a list of the protocol's track names (or none)")
    v = values.get("log_to")
    if v is not None and (isinstance(v, str) or not all(isinstance(t, str) for t in v)):
        problems.append(f"{name('log_to')} {v!r}: give a list of logger names (cifc-bench ls loggers)")
    v = values.get("image_encoders")
    if v is not None and (isinstance(v, str) or not all(isinstance(t, str) for t in v)):
        problems.append(f"{name('image_encoders')} {v!r}: give a list of image encoder names (cifc-bench ls "
                        "image-encoders), e.g. dinov2-vits14,dreamsim")
    v = values.get("compile")
    if v is not None and not isinstance(v, bool):
        problems.append(f"{name('compile')} {v!r}: give true or false")
    v = values.get("task_order")
    if v is not None and (problem := order_problem(v)):
        problems.append(f"{name('task_order')} {problem}")
    v = values.get("method_args")
    if v is not None and not isinstance(v, Mapping):
        problems.append(f"{name('method_args')} {v!r}: give a mapping of argument names to values")
    return problems


def resolve(cli: Mapping[str, Any], config_file: Mapping[str, Any] | None = None) -> RunSpec:
    """A :class:`RunSpec` from the command line over a ``--config`` file (the protocol's defaults are applied
    later, by :meth:`RunSpec.resolved`, once the protocol is loaded). ``method_args`` merge key by key."""
    data = dict(config_file or {})
    data.update({k: v for k, v in cli.items() if v is not None and k != "method_args"})
    if cli.get("method_args"):
        data["method_args"] = {**(data.get("method_args") or {}), **cli["method_args"]}
    if data.get("steps") is not None and data.get("schedule") not in (None, SHARED):
        raise ConfigError(f"--steps {data['steps']} gives every task the same budget, but --schedule {data['schedule']} "
                          "gives each task its own: drop one of them")
    return RunSpec.from_dict(data, "--config file and flags")
