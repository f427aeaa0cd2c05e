"""Method checkpoints as safetensors files, written atomically so a kill never leaves a torn file."""

from __future__ import annotations

import os
from pathlib import Path


def save_state(path: Path, state: dict) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # safetensors refuses shared or non-contiguous storage; checkpoints are small, so copy
    try:
        save_file({k: v.detach().contiguous().clone().cpu() for k, v in state.items()}, str(tmp))
    except Exception as err:  # safetensors reports a full disk as its own error type
        tmp.unlink(missing_ok=True)
        if "os error 28" in str(err) or "No space left" in str(err):
            import errno

            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err
        raise
    from cifc_bench.core.atomic import fault_point

    fault_point("state")
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
