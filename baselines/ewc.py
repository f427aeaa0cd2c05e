"""``ewc``: elastic weight consolidation on the continual LoRA of ``finetune`` (Kirkpatrick et al. 2017).

Adaptation to the concept stream (our documented recipe, baselines-and-metrics §1.5): the LoRA factors trained
continually by :class:`~cifc_bench.methods.finetune.SequentialFinetune` are anchored to their values after the
previous task with the penalty (λ/2) Σ_k F_k (θ_k − θ*_k)². After each task, F is the diagonal empirical Fisher
of the diffusion loss: the mean over ``fisher_samples`` per image of the squared per-sample gradient, each
sample a (task image, t ~ U{0..T−1}, ε ~ N(0, I)) triple. Options: ``online_gamma`` (F ← γF + F_new, Schwarz et
al. 2018; γ = 1 sums the tasks' Fishers) and ``normalize`` (each tensor's Fisher scaled to mean 1, so λ transfers
across layers). Token embeddings are per task and frozen afterwards, so they carry no penalty. Storage: one
model plus a Fisher and an anchor of the LoRA's size; no replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from cifc_bench.methods.finetune import SequentialFinetune


def fisher_diagonal(loss_fn: Callable[[object], torch.Tensor], params: Sequence[torch.Tensor],
                    samples: Sequence[object]) -> list[torch.Tensor]:
    """Mean over ``samples`` of the squared gradient of ``loss_fn(sample)`` w.r.t. each of ``params``."""
    fisher = [torch.zeros_like(p) for p in params]
    for sample in samples:
        grads = torch.autograd.grad(loss_fn(sample), list(params), allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f += g.detach() ** 2
    return [f / max(len(samples), 1) for f in fisher]


class EWC(SequentialFinetune):
    families = ("sd1", "sdxl")  # its Fisher pass is the diffusion loss of either family

    def __init__(self, bundle, rank: int = 4, lr: float = 1e-4, embedding_lr: float = 1e-3,
                 targets: str = "cross-attn", ewc_lambda: float = 1e3, fisher_samples: int = 50,
                 online_gamma: float = 1.0, normalize: bool = True) -> None:
        super().__init__(bundle, rank=rank, lr=lr, embedding_lr=embedding_lr, targets=targets)
        self.hparams.update(ewc_lambda=ewc_lambda, fisher_samples=fisher_samples, online_gamma=online_gamma,
                            normalize=normalize)
        self.ewc_lambda, self.fisher_samples = float(ewc_lambda), int(fisher_samples)
        self.online_gamma, self.normalize = float(online_gamma), bool(normalize)
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None

    def regularizer(self, pixels, embeds, noise_scheduler, generator) -> torch.Tensor:
        if self.fisher is None:
            return torch.zeros(())
        params = self._lora_params()
        terms = [(f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, params, self.anchor, strict=True)]
        return 0.5 * self.ewc_lambda * torch.stack(terms).sum()

    def after_task(self, task, budget, streams, noise_scheduler) -> None:
        from cifc_bench.diffusion.training import diffusion_loss

        params = self._lora_params()
        gen = torch.Generator().manual_seed(budget.seed + 7919)
        n_images = sum(len(c.image_paths()) for c in task.concepts)
        samples = []
        while len(samples) < self.fisher_samples * n_images:
            pixels, _, prompts = next(streams[len(samples) % len(streams)])
            samples.extend((pixels[k : k + 1], prompts[k : k + 1]) for k in range(len(prompts)))
        samples = samples[: self.fisher_samples * n_images]

        def loss_fn(sample):
            from cifc_bench.diffusion.sampling import encode_prompts

            pixels, prompts = sample
            with torch.no_grad():
                embeds = encode_prompts(self.bundle, prompts)
            return diffusion_loss(self.bundle, noise_scheduler, pixels, embeds, generator=gen)

        for p in params:
            p.requires_grad_(True)
        new = fisher_diagonal(loss_fn, params, samples)
        if self.normalize:
            # Fisher means can be tiny (LoRA A-factors while B is near zero): clamp only to avoid 0/0
            new = [f / f.mean().clamp(min=torch.finfo(f.dtype).tiny) for f in new]
        self.fisher = new if self.fisher is None else [self.online_gamma * f + n for f, n in zip(self.fisher, new, strict=True)]
        self.anchor = [p.detach().clone() for p in params]

    def state_dict(self):
        state = super().state_dict()
        if self.fisher is not None:
            for k, (f, a) in enumerate(zip(self.fisher, self.anchor, strict=True)):
                state[f"ewc.fisher{k}"], state[f"ewc.anchor{k}"] = f, a
        return state

    def stored_parameters(self) -> int:
        return sum(int(v.numel()) for k, v in self.state_dict().items() if not k.startswith("ewc."))

    def load_state_dict(self, state, tasks_done) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("ewc.")}, tasks_done)
        n = len(self._lora_params())
        if "ewc.fisher0" in state:
            device = self.bundle.device  # states load on the CPU
            self.fisher = [state[f"ewc.fisher{k}"].to(device) for k in range(n)]
            self.anchor = [state[f"ewc.anchor{k}"].to(device) for k in range(n)]
