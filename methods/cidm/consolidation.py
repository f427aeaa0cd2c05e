"""The concept consolidation loss (spec §B.2), in the paper's and in the code release's form.

Per adapted module m, A (``up``, out × r) is the task's concept subspace and B (``down``) its coefficients.

- R1, task-specific (both variants): mean over old tasks i and modules of mean|A_g A_iᵀ|. The spec recommends
  the release's mean normalisation so that γ1 = 0.1 is meaningful; the paper writes a sum.
- ``release``: R1 plus the "enhance" term mean (A_g − 1)², weights 0.1 and 0.1 (trainer_edlora.py:258-282).
- ``paper``: R1 with γ1 plus R2 = Σ_i ‖ΔW_i − H_i W*‖² with γ2, over modules, with a shared W* (out × in) and a
  per-task H_i (out × out) per module. They persist across tasks (§G.4). Each batch: step 1 trains the task
  (H, W* fixed); step 2 minimises R2 over every H_i and W* with the ΔW fixed. Step 2 is a least-squares
  problem in each block, so it is solved exactly by alternating least squares (one sweep per batch, warm-started
  from the last solution): H_i = ΔW_i W*ᵀ (W* W*ᵀ)⁻¹, then W* = (Σ H_iᵀ H_i)⁻¹ Σ H_iᵀ ΔW_i. A gradient step at
  the LoRA learning rate, the literal reading, moves W* by 3e-8 relative per 1,000 steps on SD-1.5 shapes and
  so does nothing. R2 is averaged over entries, modules and tasks, like R1 (documented choice).
  Initialisation (unspecified in the paper): W* = ΔW_1 and H_1 = I after task 1; H_g = I for a new task.
"""

from __future__ import annotations

import torch
from torch import nn


def orthogonality(current_ups: list[torch.Tensor], old_ups: list[list[torch.Tensor]]) -> torch.Tensor:
    """R1 = mean over (old task i, module m) of mean |A_g^m (A_i^m)ᵀ|; zero before the second task."""
    terms = [(cur @ old.t()).abs().mean() for cur, olds in zip(current_ups, old_ups, strict=True) for old in olds]
    return torch.stack(terms).mean() if terms else current_ups[0].new_zeros(())


def enhance(current_ups: list[torch.Tensor]) -> torch.Tensor:
    """The release's surrogate for R2: mean over modules of MSE(A_g, 1)."""
    return torch.stack([((u - 1.0) ** 2).mean() for u in current_ups]).mean()


class SharedSubspace(nn.Module):
    """W* and the H_i of the paper's R2, one set per adapted module, kept across tasks."""

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.w_star = nn.ParameterList([nn.Parameter(torch.zeros(o, i)) for o, i in shapes])
        self.h = nn.ModuleList([nn.ParameterList() for _ in shapes])  # h[m][task]: out × out

    @property
    def n_tasks(self) -> int:
        return len(self.h[0]) if len(self.h) else 0

    def add_task(self, first_deltas: list[torch.Tensor] | None = None) -> None:
        """Open H for a new task (identity); on the first task, W* starts at that task's ΔW."""
        for m, w in enumerate(self.w_star):
            self.h[m].append(nn.Parameter(torch.eye(w.shape[0], device=w.device, dtype=w.dtype)))
            if first_deltas is not None:
                with torch.no_grad():
                    w.copy_(first_deltas[m])

    def r2(self, deltas: list[list[torch.Tensor]]) -> torch.Tensor:
        """R2 = mean over modules m and tasks i of mean((ΔW_i^m − H_i^m W*^m)²); deltas[m][i]."""
        terms = [((d - self.h[m][i] @ self.w_star[m]) ** 2).mean()
                 for m, per_task in enumerate(deltas) for i, d in enumerate(per_task)]
        return torch.stack(terms).mean()

    @torch.no_grad()
    def solve(self, deltas: list[list[torch.Tensor]], sweeps: int = 1, ridge: float = 1e-6) -> float:
        """Step 2: with every ΔW fixed, ``sweeps`` alternating least-squares sweeps of H_i, then W*, on R2.

        Each block update is that block's exact minimiser; ``ridge`` (relative to the mean eigenvalue of the
        gram being inverted) only keeps a rank-deficient gram invertible. Returns R2 before the update.
        """
        before = float(self.r2([[d.detach() for d in per_task] for per_task in deltas]))
        for m, per_task in enumerate(deltas):
            # in float64: W* W*ᵀ is rank-deficient by design, and in float32 its rounding noise outweighs the ridge
            # (one float32 sweep left 25-60 % of R2 on the test problem, one float64 sweep 1e-11 of it)
            w = self.w_star[m].detach().double()
            hs = [h.detach().double() for h in self.h[m]]
            ds = [d.detach().to(device=w.device, dtype=torch.float64) for d in per_task]
            for _ in range(sweeps):
                gram = _ridged(w @ w.T, ridge)  # W* W*ᵀ (out × out)
                hs = [torch.linalg.solve(gram, (d @ w.T).T).T for d in ds]  # ΔW_i W*ᵀ (W* W*ᵀ)⁻¹; gram symmetric
                hth = _ridged(sum(h.T @ h for h in hs), ridge)
                w = torch.linalg.solve(hth, sum(h.T @ d for h, d in zip(hs, ds, strict=True)))
            self.w_star[m].copy_(w.to(self.w_star[m].dtype))
            for param, h in zip(self.h[m], hs, strict=True):
                param.copy_(h.to(param.dtype))
        return before


def _ridged(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    n = gram.shape[0]
    scale = torch.trace(gram) / n
    return gram + (ridge * scale + torch.finfo(gram.dtype).tiny) * torch.eye(n, device=gram.device, dtype=gram.dtype)
