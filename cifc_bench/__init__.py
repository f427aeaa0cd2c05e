"""cifc-bench: a benchmark suite for continual customization of text-to-image diffusion models."""

__version__ = "0.1.0"


_LAZY = {"load_results": "cifc_bench.reporting.results_data"}  # the package's facade: name -> the module that defines it


def __getattr__(name: str):
    """``cifc_bench.load_results``, imported on first use (PEP 562): importing the package imports nothing else,
    and the facade is no layer of the import graph (``tests/test_architecture.py``)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifc_bench' has no attribute {name!r}")
