"""Elastic weight aggregation (spec §B.3): per-prompt, per-layer task weights for merging task LoRAs.

Inputs, per layer l: the prompt's layer-wise encoding C^l (T × d, all positions including padding) and the
encoding K^l of one string listing every learned placeholder in task order, with ``ranges[i]`` the positions
of task i's tokens in it.

- ``paper``: mean the concept rows per task (ê_i), dot products with every prompt position, max over positions:
  M_i = max_w ⟨C_w, ê_i⟩; ψ = M² / ‖M²‖₂ (weights need not sum to 1).
- ``release``: cosine between every concept position and every prompt position, max over prompt positions,
  then mean over the task's positions: s_i; ω = s⁴ / Σ s⁴ (weights sum to 1).

Both depend only on the prompt, so the harness-facing code computes them once per prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ewa_weights(prompt: torch.Tensor, concepts: torch.Tensor, ranges: list[tuple[int, int]],
                variant: str = "paper") -> torch.Tensor:
    """``prompt`` [B, L, T, d], ``concepts`` [L, T', d] → task weights [B, L, g]."""
    if variant == "paper":
        protos = torch.stack([concepts[:, a:b].mean(1) for a, b in ranges], dim=1)  # [L, g, d]
        sims = torch.einsum("bltd,lgd->blgt", prompt, protos)
        m = sims.max(-1).values.clamp(min=0)  # [B, L, g]
        m2 = m**2
        return m2 / m2.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if variant == "release":
        sims = torch.einsum("bltd,lsd->blst", F.normalize(prompt, dim=-1), F.normalize(concepts, dim=-1))
        best = sims.max(-1).values  # [B, L, T']: each concept position's best match in the prompt
        s = torch.stack([best[..., a:b].mean(-1) for a, b in ranges], dim=-1).clamp(min=0)
        s4 = s**4
        return s4 / s4.sum(-1, keepdim=True).clamp(min=1e-12)
    raise ValueError(f"EWA variant {variant!r}: use 'paper' or 'release'")


def uniform_weights(batch: int, n_layers: int, n_tasks: int, like: torch.Tensor) -> torch.Tensor:
    """EWA switched off: the uniform merge of the ablation "Baseline" (= LoRA-M)."""
    return like.new_full((batch, n_layers, n_tasks), 1.0 / n_tasks)
