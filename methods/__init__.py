"""The built-in methods, installed as ``cifc_bench.methods``: importing the folder under a second name (``import methods``
from the checkout root) would load every module twice, as two different classes."""

if __name__ != "cifc_bench.methods":
    raise ImportError(f"import cifc_bench.methods, not {__name__!r}: the folder is installed as cifc_bench.methods "
                      "(pip install -e .)")
