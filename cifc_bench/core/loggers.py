"""Experiment logging, a plugin kind (entry-point group ``cifc_bench.loggers``): ``--log-to tensorboard``.

A logger is made per run from its directory, ``factory(run_dir) -> logger``, and receives the training loss
of every step and each evaluation's summaries; a run without ``--log-to`` makes none and writes nothing extra.
Training loops report through :func:`report`, which costs nothing (not even reading the loss off the device)
while no logger is active::

    [project.entry-points."cifc_bench.loggers"]
    my-logger = "my_package.module:make_logger"   # make_logger(run_dir) -> object with log_scalar and close
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Any, Protocol

_ACTIVE: contextvars.ContextVar[tuple] = contextvars.ContextVar("cifc_bench_loggers", default=())


class RunLogger(Protocol):
    def log_scalar(self, tag: str, value: float, step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """TensorBoard event files in ``<run>/tensorboard`` through torch's own ``SummaryWriter``."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's writer needs the tensorboard package
            raise ImportError("--log-to tensorboard needs the tensorboard package: pip install "
                              "'cifc-bench[tensorboard]' (or pip install tensorboard)") from err
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def tensorboard(run_dir: Path) -> TensorBoard:
    """Logger ``tensorboard``: training losses per step and each evaluation's summaries, as event files."""
    return TensorBoard(run_dir)


def make_loggers(names, run_dir: Path) -> list[RunLogger]:
    from cifc_bench.core.registry import LOGGERS, load_component

    return [load_component(LOGGERS, name, "logger")(Path(run_dir)) for name in names]


@contextlib.contextmanager
def active(loggers: list[Any]):
    """Route :func:`report` to ``loggers`` inside the block; a step counter per tag runs across tasks."""
    token = _ACTIVE.set(tuple((logger, {}) for logger in loggers))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def logging() -> bool:
    """Whether any logger listens (a loop reads its loss off the device only then)."""
    return bool(_ACTIVE.get())


def report(tag: str, value, step: int | None = None) -> None:
    """Give ``value`` (a number or a one-element tensor) to every active logger, at ``step`` or at the tag's
    next step."""
    for logger, steps in _ACTIVE.get():
        n = steps.get(tag, 0) if step is None else step
        logger.log_scalar(tag, float(value), n)
        steps[tag] = n + 1
