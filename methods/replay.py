"""``replay``: the upper-bound reference, joint training on every concept seen so far. It breaks the benchmark's
rule (no replay of earlier tasks' data): it keeps each task's images and trains on all of them at every task,
as continual-learning suites report joint training beside the lower bound (``base``). The leaderboard shows it
apart and never ranks it (``Method.reference``); every table reads between ``base`` and ``replay``.

The model is ``finetune``'s (one continual LoRA on the cross-attention, its placeholder tokens), trained at task t
round-robin over the images of all t concepts, every concept's tokens training. ``budget`` sets the steps:

- ``cumulative`` (the default): the sum of the seen tasks' budgets, as avalanche's ``Cumulative`` strategy trains
  the same epochs on the growing union. Every concept gets its own budget again at every task, the newest its
  full budget, as ``finetune`` gives it: a bound on what forgetting costs, at T(T+1)/2 budgets for T tasks.
- ``task``: the task's own budget spread over the t concepts (version 1). It costs what ``finetune`` costs, but
  the newest concept gets 1/t of its budget: on ``synth10`` seed 0 it learned the last concepts worse than
  ``finetune`` and ended below four methods (``docs/findings/replay-budget.md``), so it bounds nothing.

Hyper-parameters otherwise as ``finetune``'s. Versions: v2: the ``cumulative`` budget (v1 trained as ``task``).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from cifc_bench.api import Task
from cifc_bench.diffusion.adapter_method import one_of
from cifc_bench.diffusion.training import train_lora_and_tokens

from .finetune import SequentialFinetune

CUMULATIVE = "cumulative"
BUDGETS = {
    CUMULATIVE: "the sum of the seen tasks' budgets: every concept its own budget at every task",
    "task": "the task's own budget, shared by every concept seen so far",
}
STEPS = "replay.steps"  # each learned task's own budget, in the state: a resumed run replays as the first did


class Replay(SequentialFinetune):
    storage = "replay (reference: keeps every task's images)"
    reference = True
    families = ("sd1", "sdxl")  # finetune's model and trainer
    version = 2  # its history: the module's docstring

    @classmethod
    def optimisation_steps(cls, budget_steps, method_args):
        """The one rule for replay's steps: ``learn_task`` trains the last of these, ``--dry-run`` counts them."""
        if method_args.get("budget", CUMULATIVE) == "task":
            return tuple(budget_steps)
        return tuple(itertools.accumulate(budget_steps))

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 targets: str = "cross-attn", budget: str = CUMULATIVE) -> None:
        one_of("budget", budget, BUDGETS)
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, targets=targets)
        self.budget = budget
        self.seen: list = []  # every concept learned so far: their images are replayed
        self.task_steps: list[int] = []  # each learned task's own budget

    def learn_task(self, task, budget) -> None:
        gen, _ = self.task_tokens(task, budget)
        self.seen += list(task.concepts)
        self.task_steps.append(budget.steps)
        joint = Task(index=task.index, concepts=tuple(self.seen))
        steps = self.optimisation_steps(self.task_steps, {"budget": self.budget})[-1]
        budget = dataclasses.replace(budget, steps=steps)
        ids = [i for c in self.seen for i in self.tokens.ids[c.name]]
        lora = self._lora_params()
        self.trained, _, _ = train_lora_and_tokens(self.bundle, joint, budget, lora, ids, self.lr,
                                                      self.embedding_lr, gen)
        for p in lora:
            p.requires_grad_(False)

    def adapter_state(self):
        return {**super().adapter_state(), STEPS: torch.tensor(self.task_steps, dtype=torch.int64)}

    def load_adapter_state(self, state, tasks_done) -> None:
        super().load_adapter_state(state, tasks_done)
        self.seen = [c for t in tasks_done for c in t.concepts]
        self.task_steps = [int(s) for s in state[STEPS]] if STEPS in state else []
