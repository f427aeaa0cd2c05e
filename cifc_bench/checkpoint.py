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
    save_file({k: v.detach().contiguous().clone().cpu() for k, v in state.items()}, str(tmp))
    from cifc_bench.atomic import fault_point

    fault_point("state")
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
