"""cifc-bench: a benchmark suite for continual customization of text-to-image diffusion models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cifc_bench.load_results``, imported on first use (pandas), so that importing the package stays cheap."""
    if name == "load_results":
        from cifc_bench.results_data import load_results

        return load_results
    raise AttributeError(f"module 'cifc_bench' has no attribute {name!r}")
