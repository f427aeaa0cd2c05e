"""The ``result.json`` file of a run directory (the run's settings live in :mod:`cifc_bench.core.config`).

A run directory holds ``result.json`` (rewritten atomically after every task), ``state/`` (the method's
checkpoint after each task, for ``--resume``) and ``images/`` (every generated image, so re-scoring never
regenerates). ``SCHEMA_VERSION`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so a kill leaves either the old or the new file."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=False), fault="result")


def write_text_atomic(path: Path, text: str, fault: str | None = None) -> None:
    """Write text via a temp file and rename, so a kill leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if fault:
        from cifc_bench.core.atomic import fault_point

        fault_point(fault)
    os.replace(tmp, path)


def read_result(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a cifc-bench run directory?")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a complete JSON file ({err}); it may be from a run killed while writing "
                         f"it by an older version, or edited by hand") from err
    if not isinstance(data, dict) or not isinstance(data.get("run_info"), dict):
        raise ValueError(f"{path} is not a cifc-bench result file (no run_info mapping)")
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


#: What makes two runs the same experiment (settings that do not change the numbers are not in it).
_NOT_IDENTITY = ("device", "data_dir", "tracks", "eval_workers", "log_to", "image_encoders")  # tracks add numbers and change none; where the
# images are generated changes none


def run_identity(result: dict[str, Any]) -> str:
    """A digest of what defines a run's numbers: protocol and version, method, its implementation version and
    arguments, every resolved setting (seed included; not the device or the data folder), the weights of the
    model and the scorer, and the suite's version. Two runs with one identity are one run counted twice."""
    import hashlib

    info = result["run_info"]
    config = {k: v for k, v in (info.get("config") or {}).items() if k not in _NOT_IDENTITY}
    if config.get("dtype") == "fp32":  # every run before --dtype existed was fp32: they keep their identities
        del config["dtype"]
    if not config.get("compile", True):  # likewise eager, as every run before --compile
        del config["compile"]
    if config.get("task_order") == "protocol":  # and the protocol's order, as every run before --task-order
        del config["task_order"]
    if "retention_prompts" in config and config["retention_prompts"] is None:  # all of them, as before the setting
        del config["retention_prompts"]
    scorer = info.get("scorer_fingerprint")  # rescoring updates it: a rescored run is scored like a new one
    key = {
        "protocol": [info["protocol"]["name"], str(info["protocol"].get("version"))],
        "method": info["method"], "method_version": int(info.get("method_version", 1)),
        "method_args": info.get("method_args") or {}, "config": config,
        "model": info.get("model_fingerprint"), "scorer": scorer,
        "suite": (info.get("packages") or {}).get("cifc-bench"),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
