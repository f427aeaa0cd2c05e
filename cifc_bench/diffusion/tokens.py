"""Placeholder tokens: adding a concept's tokens to the tokenizer and text encoder, and keeping them across a
resume. ``state_dict`` holds tensors only, so the ids of added tokens cannot be saved; :class:`PlaceholderTokens`
re-adds them in task order on resume and restores their learned embedding rows, so no method rebuilds ids::

    tokens = PlaceholderTokens(bundle)              # or PlaceholderTokens(bundle, layers=16): one per layer
    new_ids = tokens.add(concept, generator)        # in learn_task: the rows to train
    state.update(tokens.state_dict())               # in state_dict: "tokens.<concept>" -> rows
    tokens.load_state_dict(state, tasks_done)       # in load_state_dict
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from cifc_bench.api import Concept


def add_tokens(bundle, groups: list[list[str]], initializers, generator: torch.Generator | None = None,
               owner: str = "") -> list[int]:
    """Add token groups to the tokenizer; every token of group k starts from ``initializers[k]``.

    A word initialiser copies the mean embedding of that word's tokens; a number is the std-dev of a random
    normal initialisation drawn once per group (CIDM's first placeholder). Returns the new ids, group by group.
    On SDXL the tokens join both tokenizers and both embedding tables (the second initialised after the first,
    at its own width), with the same ids.
    """
    ids = _add_to(bundle.tokenizer, bundle.text_encoder, groups, initializers, generator, owner)
    for tok, enc in second_text_encoder(bundle):
        if _add_to(tok, enc, groups, initializers, generator, owner) != ids:
            raise ValueError(f"the tokens of concept {owner!r} got other ids in SDXL's second tokenizer")
    return ids


def second_text_encoder(bundle) -> list[tuple]:
    """[(tokenizer_2, text_encoder_2)] of an SDXL bundle (its second tokenizer may be the first one's object:
    then only the table), else []."""
    enc = getattr(bundle, "text_encoder_2", None)
    if enc is None:
        return []
    return [(bundle.tokenizer_2, enc)]


def embedding_tables(bundle) -> list[torch.Tensor]:
    """The input embedding matrices the placeholder rows live in: one on SD-1.x, two on SDXL."""
    return [enc.get_input_embeddings().weight for enc in (bundle.text_encoder, *(e for _, e in second_text_encoder(bundle)))]


def _add_to(tok, enc, groups, initializers, generator, owner: str) -> list[int]:
    names = [t for group in groups for t in group]
    clashes = [t for t in names if t in tok.get_vocab()]
    if clashes and len(tok) == enc.get_input_embeddings().weight.shape[0]:
        raise ValueError(f"token(s) {clashes[:3]} of concept {owner!r} already exist in the tokenizer")
    if not clashes:  # else a tokenizer shared by SDXL's two encoders has them already: the table is behind
        tok.add_tokens(names)
    enc.resize_token_embeddings(len(tok), mean_resizing=False)
    ids = tok.convert_tokens_to_ids(names)
    emb = enc.get_input_embeddings().weight
    with torch.no_grad():
        start = 0
        for group, init in zip(groups, initializers, strict=True):
            if isinstance(init, str):
                vec = emb[tok(init, add_special_tokens=False).input_ids].mean(0)
            else:
                vec = torch.randn(emb.shape[1], generator=generator).to(emb) * float(init)
            emb[ids[start : start + len(group)]] = vec
            start += len(group)
    return ids


def add_placeholder_tokens(bundle, concept: Concept, generator: torch.Generator | None = None) -> list[int]:
    """Add the concept's placeholders to the tokenizer and initialise their rows from its initialisers."""
    return add_tokens(bundle, [[p] for p in concept.placeholders], concept.initializers, generator, concept.name)


def layer_token(placeholder: str, layer: int) -> str:
    """Layer ``layer``'s copy of a placeholder: ``<dog1>`` -> ``<dog1_l3>`` (ED-LoRA's layer-wise tokens)."""
    return f"{placeholder[:-1]}_l{layer}>" if placeholder.endswith(">") else f"{placeholder}_l{layer}"


def add_layer_tokens(bundle, concept, n_layers: int, generator: torch.Generator | None = None) -> list[int]:
    """One token per placeholder per layer, every layer's copy initialised alike; ids placeholder-major."""
    groups = [[layer_token(p, layer) for layer in range(n_layers)] for p in concept.placeholders]
    return add_tokens(bundle, groups, concept.initializers, generator, concept.name)


class PlaceholderTokens:
    """The placeholder tokens one method added, concept by concept, and their rows in its state.

    ``layers`` gives each placeholder one token per cross-attention layer (CIDM, Mix-of-Show). ``transform``
    maps a concept before its tokens are added (C-LoRA's random initialisation), on resume as in training.
    """

    def __init__(self, bundle, layers: int | None = None, prefix: str = "tokens.",
                 transform: Callable[[Concept], Concept] | None = None) -> None:
        self.bundle, self.layers, self.prefix = bundle, layers, prefix
        self.transform = transform or (lambda c: c)
        self.ids: dict[str, list[int]] = {}

    def add(self, concept: Concept, generator: torch.Generator | None = None) -> list[int]:
        """Add the concept's tokens (initialised from its initialisers) and return their ids."""
        concept = self.transform(concept)
        ids = (add_layer_tokens(self.bundle, concept, self.layers, generator) if self.layers
               else add_placeholder_tokens(self.bundle, concept, generator))
        self.ids[concept.name] = ids
        return ids

    @property
    def count(self) -> int:
        """Parameters the tokens hold (rows × embedding width)."""
        return sum(len(ids) for ids in self.ids.values()) * sum(emb.shape[1] for emb in embedding_tables(self.bundle))

    def _tables(self) -> list[tuple[str, torch.Tensor]]:
        """(state prefix, embedding matrix): ``tokens.`` for the text encoder, ``tokens_2.`` for SDXL's second."""
        tables = embedding_tables(self.bundle)
        return [(self.prefix if k == 0 else f"{self.prefix.rstrip('.')}_{k + 1}.", emb) for k, emb in enumerate(tables)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{prefix}{name}": emb[ids].detach().clone() for prefix, emb in self._tables()
                for name, ids in self.ids.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], tasks_done: Sequence) -> None:
        """Add the tokens of every concept of ``tasks_done`` not added yet, in task order, then restore the
        saved rows of every concept the state has."""
        quiet = torch.Generator().manual_seed(0)  # overwritten below; leaves torch's global generator alone
        for task in tasks_done:
            for concept in task.concepts:
                if concept.name not in self.ids:
                    self.add(concept, quiet)
        with torch.no_grad():
            for prefix, emb in self._tables():
                for name, ids in self.ids.items():
                    if f"{prefix}{name}" in state:
                        emb[ids] = state[f"{prefix}{name}"].to(emb)
