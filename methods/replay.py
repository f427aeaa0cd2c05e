"""``replay``: the upper-bound reference, joint training on every concept seen so far. It breaks the benchmark's
rule (no replay of earlier tasks' data): it keeps each task's images and trains on all of them at every task,
as continual-learning suites report joint training beside the lower bound (``base``). The leaderboard shows it
apart and never ranks it (``Method.reference``); every table reads between ``base`` and ``replay``.

The model is ``finetune``'s (one continual LoRA on the cross-attention, its placeholder tokens): at task t the
same step budget is spread round-robin over the t concepts' images, and every concept's tokens keep training.
Hyper-parameters as ``finetune``'s.
"""

from __future__ import annotations

from cifc_bench.api import Task
from cifc_bench.diffusion.training import train_lora_and_tokens

from .finetune import SequentialFinetune


class Replay(SequentialFinetune):
    storage = "replay (reference: keeps every task's images)"
    reference = True
    families = ("sd1", "sdxl")  # finetune's model and trainer
    version = 1

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 targets: str = "cross-attn") -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, targets=targets)
        self.seen: list = []  # every concept learned so far: their images are replayed

    def learn_task(self, task, budget) -> None:
        gen, _ = self.task_tokens(task, budget)
        self.seen += list(task.concepts)
        joint = Task(index=task.index, concepts=tuple(self.seen))
        ids = [i for c in self.seen for i in self.tokens.ids[c.name]]
        lora = self._lora_params()
        self.trained, _, _ = train_lora_and_tokens(self.bundle, joint, budget, lora, ids, self.lr,
                                                      self.embedding_lr, gen)
        for p in lora:
            p.requires_grad_(False)

    def load_state_dict(self, state, tasks_done) -> None:
        super().load_state_dict(state, tasks_done)
        self.seen = [c for t in tasks_done for c in t.concepts]
