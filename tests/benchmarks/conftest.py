"""What the benchmark modules share: a ratio of medians measured side by side in one run."""

import pytest


@pytest.fixture(scope="module")
def record_ratio():
    """``record(benchmark, name, baseline, key, label)``: keep this benchmark's median and, once the baseline's is
    known, store median ÷ baseline median in ``extra_info[key]`` and print it (nothing under
    ``--benchmark-disable``, where each benchmark runs once as a smoke test)."""
    medians: dict[str, float] = {}

    def record(benchmark, name: str, baseline: str, key: str, label: str) -> float | None:
        if benchmark.stats is None:
            return None
        medians[name] = benchmark.stats.stats.median
        if name == baseline or baseline not in medians:
            return None
        ratio = medians[name] / medians[baseline]
        benchmark.extra_info[key] = ratio
        print(f"\n{name}: {ratio:.3f} x {label} (median)")
        return ratio

    return record
