"""CIDM: layer-wise concept tokens, concept consolidation loss, elastic weight aggregation and
context-controllable synthesis. The algorithm is in :mod:`.method`; its parts in :mod:`.layerwise`,
:mod:`.consolidation` and :mod:`.ewa`."""

from .method import CIDM

__all__ = ["CIDM"]
