"""The order in which a run learns a protocol's concepts (``--task-order``): the protocol's own, reversed, or a
seeded shuffle. Continual-learning results depend on the order, so a run records it and a sweep can cross it with
seeds. A concept keeps its name, its evaluation prompts, its image seeds and its training budget in every order,
so runs in two orders pair concept by concept; only the task index (and so the per-task training seed) moves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

PROTOCOL = "protocol"
REVERSED = "reversed"
RANDOM = "random:"
T = TypeVar("T")


def order_problem(order: object) -> str | None:
    """Why ``order`` is not a task order, or None when it is one."""
    if order in (PROTOCOL, REVERSED):
        return None
    if isinstance(order, str) and order.startswith(RANDOM) and order[len(RANDOM):].isdigit():
        return None
    return (f"{order!r}: use {PROTOCOL!r} (the protocol's order), {REVERSED!r} or '{RANDOM}SEED' (a shuffle fixed by "
            "a whole number, e.g. random:1)")


def permutation(order: str, n: int) -> tuple[int, ...]:
    """The protocol positions of the concepts learned first, second, ...: ``permutation(o, n)[j]`` is the protocol
    index of the run's task j."""
    problem = order_problem(order)
    if problem:
        raise ValueError(f"task order {problem}")
    if order == PROTOCOL:
        return tuple(range(n))
    if order == REVERSED:
        return tuple(reversed(range(n)))
    import numpy as np

    return tuple(int(i) for i in np.random.default_rng(int(order[len(RANDOM):])).permutation(n))


def in_order(items: Sequence[T], order: str) -> tuple[T, ...]:
    """``items`` (one per protocol task) in the run's order."""
    return tuple(items[i] for i in permutation(order, len(items)))


def reordered(sequence, order: str):
    """``sequence`` (a :class:`~cifc_bench.api.TaskSequence` in the protocol's order) as the run learns it: its
    tasks in ``order``, renumbered from 0. Multi-concept prompts and tracks name their concepts, so they stay."""
    import dataclasses

    from cifc_bench.api import Task

    if order == PROTOCOL:
        return sequence
    tasks = in_order(sequence.tasks, order)
    return dataclasses.replace(sequence, tasks=tuple(Task(index=j, concepts=t.concepts) for j, t in enumerate(tasks)))
