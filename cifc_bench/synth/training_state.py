"""The complete state of a training loop as one safetensors file, so that a killed or chunked pretraining
continues bit for bit where it stopped.

Weights, Adam moments, EMA shadows and the torch generator are its tensors; the step, the numpy stream,
optimizer hyper-parameters and loss history are JSON in its metadata header. One file, written to a temporary
name and renamed, so a kill leaves either the old state or the new one. Its checksum (:func:`tensor_digest`)
covers the tensors only: re-running a chunk reproduces it, though wall times in the metadata differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch


def capture(module: torch.nn.Module, optimizer: torch.optim.Optimizer, ema, generator: torch.Generator,
            rng: np.random.Generator, extra: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a training loop: module weights, optimizer and EMA state, both random streams."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).clone().contiguous()
    ema_state = ema.state_dict()
    for k, shadow in enumerate(ema_state.pop("shadow_params")):
        tensors[f"ema.{k}"] = shadow.detach().clone().contiguous()
    ema_state.pop("collected_params", None)
    tensors["torch_generator"] = generator.get_state()
    meta = {"optimizer_groups": opt["param_groups"], "optimizer_keys": sorted({k for s in opt["state"].values() for k in s}),
            "ema": ema_state, "numpy_rng": rng.bit_generator.state, **extra}
    return tensors, meta


def restore(tensors: dict[str, torch.Tensor], meta: dict, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
            ema, generator: torch.Generator, rng: np.random.Generator) -> None:
    """Inverse of :func:`capture`, in place."""
    module.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    shadows = [tensors[f"ema.{k}"].clone() for k in range(sum(n.startswith("ema.") for n in tensors))]
    ema.load_state_dict({**meta["ema"], "shadow_params": shadows})
    generator.set_state(tensors["torch_generator"])
    rng.bit_generator.state = meta["numpy_rng"]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Write ``name.safetensors`` atomically; returns :func:`tensor_digest` of the tensors (also in the header)."""
    from safetensors.torch import save_file

    from cifc_bench.core.atomic import fault_point

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    digest = tensor_digest(tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(dict(sorted(tensors.items())), str(tmp), metadata={"meta": json.dumps({**meta, "digest": digest})})
    fault_point("state")
    tmp.replace(path)
    return digest


def load(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The saved state, or None when there is none."""
    from safetensors import safe_open

    path = folder / f"{name}.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensor_digest(tensors) != meta["digest"]:
        raise RuntimeError(f"{path} does not match its own checksum: the file is damaged. Delete it to restart "
                           f"the chunk it belongs to (finished chunks are kept in the log).")
    return tensors, meta
