"""The run configuration and the ``result.json`` file of a run directory.

A run directory holds ``result.json`` (rewritten atomically after every task), ``state/`` (the method's
checkpoint after each task, for ``--resume``) and ``images/`` (every generated image, so re-scoring never
regenerates). ``SCHEMA_VERSION`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
EVAL_SCHEDULES = ("each-task", "final")
SHARED = "shared"  # the training schedule that gives every task ``steps`` steps at the method's own rates


class ConfigError(ValueError):
    """A run setting is invalid; the message names the setting, the value and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. ``None`` fields take the protocol's defaults in :meth:`resolved`."""

    method: str = "finetune"
    protocol: str | None = None  # None: the installed protocol marked `default: true` (see default_protocol)
    method_args: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str | None = None
    scorer: str | None = None
    steps: int | None = None
    schedule: str | None = None  # "shared" (``steps`` for every task) or a protocol's named per-task schedule
    batch_size: int | None = None
    prompts_per_concept: int | None = None
    images_per_prompt: int | None = None
    resolution: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    eval_schedule: str = "each-task"
    eval_batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    dino: str | None = None  # DINO model for ia_dino ("none": skip the metric)
    multi_images_per_prompt: int | None = None  # images per multi-concept prompt, for the neglect rate
    calibration_images: int | None = None  # base-model class-word images per concept for presence thresholds

    def __post_init__(self) -> None:
        if self.eval_schedule not in EVAL_SCHEDULES:
            raise ConfigError(f"eval_schedule={self.eval_schedule!r}: use one of {EVAL_SCHEDULES}")
        for name in ("steps", "batch_size", "prompts_per_concept", "images_per_prompt", "resolution",
                     "num_inference_steps", "eval_batch_size", "multi_images_per_prompt", "calibration_images"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "steps" else 1)):
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: give a whole number "
                                  f"{'>= 0' if name == 'steps' else '>= 1'}")
        if self.resolution is not None and self.resolution % 8:
            raise ConfigError(f"--resolution {self.resolution}: give a multiple of 8 (e.g. 32, 256, 512)")

    def resolved(self, defaults: dict[str, Any]) -> RunConfig:
        """Fill unset fields from the protocol's ``defaults`` (then from SD-1.5-style fallbacks).

        ``defaults.method_args.<method>`` holds backbone-specific hyper-parameters (a 32-pixel model wants other
        learning rates than SD-1.5); arguments given for the run override them key by key.
        """
        fallback = {
            "steps": defaults.get("train_steps", 800), "batch_size": defaults.get("train_batch_size", 2),
            "prompts_per_concept": defaults.get("prompts_per_concept", 20),
            "images_per_prompt": defaults.get("images_per_prompt", 50),
            "resolution": defaults.get("resolution", 512),
            "num_inference_steps": defaults.get("num_inference_steps", 50),
            "guidance_scale": defaults.get("guidance_scale", 7.5),
            "negative_prompt": defaults.get("negative_prompt", ""),
            "model": defaults.get("model"), "scorer": defaults.get("scorer"),
            "eval_batch_size": defaults.get("eval_batch_size", 8),
            "dino": defaults.get("dino", "none"),
            "multi_images_per_prompt": defaults.get("multi_images_per_prompt", 8),
            "calibration_images": defaults.get("calibration_images", 100),
        }
        updates: dict[str, Any] = {k: v for k, v in fallback.items() if getattr(self, k) is None}
        if self.schedule is None:  # typed --steps means one budget for every task
            updates["schedule"] = SHARED if self.steps is not None else \
                (defaults.get("schedule") or {}).get(self.method, SHARED)
        protocol_args = (defaults.get("method_args") or {}).get(self.method, {})
        if protocol_args:
            updates["method_args"] = {**protocol_args, **self.method_args}
        return dataclasses.replace(self, **updates)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown run setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so a kill leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a cifc-bench run directory?")
    data = json.loads(path.read_text())
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema_version {data.get('schema_version')!r}; this cifc-bench reads {SCHEMA_VERSION}")
    return data


def git_info() -> dict[str, Any]:
    """The source tree's commit and whether it had uncommitted changes (None outside a git checkout)."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        # result files are data, not source: runs that write into the checkout's results/ keep it clean
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)results"], cwd=here, capture_output=True, text=True, check=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("cifc-bench", "torch", "diffusers", "transformers", "peft", "open_clip_torch", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
