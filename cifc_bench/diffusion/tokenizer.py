"""The real SD-1.5 / CLIP tokenizer, built offline from the BPE vocabulary that open_clip ships.

SD-1.5's tokenizer and OpenAI CLIP share one 49,408-token BPE vocabulary. open_clip bundles it as
``bpe_simple_vocab_16e6.txt.gz``; rebuilding ``vocab`` and ``merges`` from it the way open_clip's
``SimpleTokenizer`` does gives the same token ids as the hub tokenizer, with no download.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

CONTEXT_LENGTH = 77
N_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) exactly as CLIP orders them: bytes, bytes+</w>, merges, then the two specials."""
    data = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer():
    """A ``transformers.CLIPTokenizer`` identical in ids to ``openai/clip-vit-large-patch14``'s."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=CONTEXT_LENGTH)
