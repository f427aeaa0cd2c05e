"""The built-in baselines, installed as ``cifc_bench.baselines``: importing the folder under a second name (``import baselines``
from the checkout root) would load every module twice, as two different classes."""

if __name__ != "cifc_bench.baselines":
    raise ImportError(f"import cifc_bench.baselines, not {__name__!r}: the folder is installed as cifc_bench.baselines "
                      "(pip install -e .)")
