"""One run on many processes: ``torchrun --nproc-per-node 8 -m cifc_bench.cli run ...`` or
``accelerate launch -m cifc_bench.cli run ...``.

The launcher starts the processes; accelerate's ``PartialState`` joins them into a process group, and each
process takes its local GPU (``--device cuda``). The harness then splits the work so that the images are bit-identical to
a one-process run on the same hardware:

- rank 0 trains each task, saves the method state and alone writes ``result.json``; the other ranks load the
  state after a barrier;
- the images of an evaluation and of the neglect calibration are dealt out by whole batches (the batches a
  single process would make), so each image is sampled in the same batch as in a single process;
- rank 0 scores every image (scores are cheap beside sampling) exactly as a single process would.

Outside a launcher (``WORLD_SIZE`` unset or 1) everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

#: how long a rank waits at a barrier: rank 0 trains a whole task (and scores an evaluation) meanwhile
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``index`` of ``count`` processes (0 of 1 outside a launcher)."""

    index: int = 0
    count: int = 1
    local_index: int = 0

    @property
    def main(self) -> bool:
        return self.index == 0

    def share(self, items: list) -> list:
        """This rank's items, dealt round-robin (items are whole batches, so batches never change)."""
        return items[self.index :: self.count]

    def barrier(self) -> None:
        if self.count > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a run directory chosen once, a calibration computed once)."""
        if self.count == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the others)."""
        if self.count == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.count if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def device(self, device: str) -> str:
        """The device of this rank for a run's ``--device``: ``cuda`` becomes this rank's own GPU."""
        from cifc_bench.core.config import ConfigError

        if self.count == 1 or not device.startswith("cuda"):
            return device
        if device != "cuda":
            raise ConfigError(f"--device {device} would put all {self.count} processes on one GPU; under torchrun or "
                              "accelerate launch give --device cuda (each process takes its local GPU)")
        return f"cuda:{self.local_index}"


SINGLE = Ranks()


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join() -> Ranks:
    """This process's :class:`Ranks`, joining the launcher's process group on first call; :data:`SINGLE`
    outside a launcher. The group is gloo's whatever the device: the processes exchange only barriers and
    pickled objects (a run directory, calibration images), never model tensors."""
    if not launched():
        return SINGLE
    from accelerate import PartialState

    state = PartialState(cpu=True, timeout=BARRIER_TIMEOUT)
    return Ranks(index=state.process_index, count=state.num_processes, local_index=state.local_process_index)
