"""Diffusers model folders: built once on first use (safely, when several processes ask at once), and the
sampler a loaded folder runs with. Shared by the SD-1.x and SDXL loaders (:mod:`.models`, :mod:`.sdxl`)."""

from __future__ import annotations

from pathlib import Path


def built_once(path: Path, build) -> Path:
    """``path``, made by ``build(path)`` unless it holds a model already. Concurrent first uses (test workers)
    wait on a lock and build it once; without the lock a second builder would replace the folder while the
    first one loads from it. In a launched run rank 0 builds while the others wait: transformers'
    ``save_pretrained`` writes nothing on the other ranks."""
    import fcntl

    import torch.distributed as dist

    ranked = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not ranked or dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / "model_index.json").exists():
                build(path)
    if ranked:
        dist.barrier()
    return path


def load_scheduler(source: str, evaluation_default):
    """The bundle's own sampler class, except SD-1.x's PNDM default, which becomes DPM-Solver++ (the sampler
    of the CIDM evaluation). A pixel-space bundle saves DDIM with x0 clipping and must keep it."""
    import diffusers

    config = evaluation_default.load_config(source, subfolder="scheduler")
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None or config.get("_class_name") == "PNDMScheduler":
        cls = evaluation_default
    return cls.from_config(config)
