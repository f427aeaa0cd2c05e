"""The shape the built-in adapter methods share (a method toolkit, as diffusers keeps shared pieces in one module):
each task adds its concepts' placeholder tokens from a generator seeded by the task's budget, trains adapter
weights beside them, counts what it trained, and saves its adapters with the tokens' rows. A method built on it
writes only its own learning (``learn_task``), sampling (``generate``) and adapter state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from cifc_bench.api import Method, Task, TrainBudget
from cifc_bench.diffusion.tokens import PlaceholderTokens


def one_of(name: str, value: Any, choices: Mapping[str, str] | Iterable[str]) -> None:
    """Reject a method argument outside ``choices`` (a mapping gives each choice's meaning), naming the value and
    every choice, so that a typo in ``--method-arg`` fails before any training."""
    if value in choices:
        return
    if isinstance(choices, Mapping):
        listed = ", ".join(f"{c!r} ({meaning})" for c, meaning in choices.items())
    else:
        listed = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{name}={value!r} is not one of: {listed}")


class AdapterMethod(Method):
    """A :class:`~cifc_bench.api.Method` that learns placeholder tokens and adapters. ``self.tokens`` holds the
    tokens (a subclass may replace it in its constructor: per-layer tokens, a transform); ``self.trained`` is what
    the last task trained, which :meth:`trainable_parameters` reports. Subclasses give :meth:`adapter_state` and
    :meth:`load_adapter_state`; the tokens' rows join the state under their own prefix.

    The hyper-parameters every adapter method names alike are read here: ``lr`` (adapter weights),
    ``embedding_lr`` (the new token rows) and ``rank`` (the LoRA rank, ``None`` for a method without one)."""

    def __init__(self, bundle, **hparams) -> None:
        super().__init__(bundle, **hparams)
        self.tokens = PlaceholderTokens(bundle)
        self.trained = 0
        self.lr, self.embedding_lr = float(hparams["lr"]), float(hparams["embedding_lr"])
        self.rank = int(hparams["rank"]) if "rank" in hparams else None

    def task_tokens(self, task: Task, budget: TrainBudget) -> tuple[torch.Generator, list[int]]:
        """The task's generator, seeded by its budget, after adding each of its concepts' tokens from it in
        order; and the new token ids."""
        generator = torch.Generator().manual_seed(budget.seed)
        new_ids: list[int] = []
        for concept in task.concepts:
            new_ids += self.tokens.add(concept, generator)
        return generator, new_ids

    def trainable_parameters(self) -> int:
        return self.trained

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapters' tensors, as saved after each task."""
        raise NotImplementedError

    def load_adapter_state(self, state: Mapping[str, torch.Tensor], tasks_done: Sequence[Task]) -> None:
        """Restore the adapters of ``state`` (the state after ``tasks_done``) on a fresh model."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.adapter_state(), **self.tokens.state_dict()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], tasks_done: Sequence[Task]) -> None:
        self.tokens.load_state_dict(state, tasks_done)
        self.load_adapter_state(state, tasks_done)
