"""Progress bars for long work (training, generation, scoring), quiet when output is not a terminal.

``CIFC_BENCH_PROGRESS=1`` forces bars on (e.g. in a batch log), ``0`` turns them off.
"""

from __future__ import annotations

import os


def progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    setting = os.environ.get("CIFC_BENCH_PROGRESS")
    disable = None if setting is None else setting == "0"  # None: tqdm decides (off when not a TTY)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, **kwargs)
