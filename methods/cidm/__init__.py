"""CIDM: layer-wise concept tokens, concept consolidation loss, elastic weight aggregation and
context-controllable synthesis. The algorithm is in :mod:`.method`; its parts in :mod:`.consolidation` and
:mod:`.ewa`; the layer-wise attention toolkit it shares with Mix-of-Show in :mod:`cifc_bench.diffusion.layerwise`."""

from .method import CIDM

__all__ = ["CIDM"]
