"""``base``: the zero-shot lower bound. It learns nothing and prompts the base model with class words.

Every placeholder group in a prompt is replaced by its concept's class word (``<dog1> <dog2>`` becomes
``dog``), so the scores show what SD-1.5 gives for a concept it has never seen.
"""

from __future__ import annotations

from cifc_bench.api import Method
from cifc_bench.diffusion.sampling import generate_requests


class ZeroShot(Method):
    storage = "none"
    families = ("sd1", "sdxl")  # the shared sampler alone
    seed_invariant = True  # no training, fixed image seeds: one run serves every seed of a sweep

    def __init__(self, bundle) -> None:  # no hyper-parameters: a typo in --method-args must not pass silently
        super().__init__(bundle)

    def learn_task(self, task, budget) -> None:
        """Nothing to learn: the base model stays as it is."""

    def generate(self, requests, settings):
        prompts = []
        for r in requests:
            text = r.prompt
            for concept in r.concepts:
                text = concept.to_class_words(text)
            prompts.append(text)
        return generate_requests(self.bundle, requests, settings, prompts=prompts)
