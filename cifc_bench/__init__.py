"""cifc-bench: a benchmark suite for continual customization of text-to-image diffusion models."""

__version__ = "0.1.0"
