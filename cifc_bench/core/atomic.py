"""Writing a whole folder so that a kill never leaves a half-written one behind its real name."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; when the block succeeds it becomes ``target``.

    An existing ``target`` is replaced, unless ``keep(target)`` says it is already complete (deterministic
    content another process wrote meanwhile). On error the temporary folder is removed and ``target`` is left
    as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield tmp
        if target.exists():
            if keep is not None and keep(target):
                return
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.exists():  # only a concurrent writer that got there first is acceptable
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_COUNTS: dict[str, int] = {}


def fault_point(kind: str) -> None:
    """Fault injection for the reliability tests. With ``CIFC_BENCH_FAULT=kill:<kind>:<n>`` the process kills
    itself (SIGKILL) just before its n-th ``kind`` write (``result``, ``state`` or ``image``) replaces the real
    file, i.e. with the temporary file complete and the old file still in place. Unset, it does nothing."""
    spec = os.environ.get("CIFC_BENCH_FAULT")
    if not spec:
        return
    action, want, n = spec.split(":")
    if want != kind:
        return
    _COUNTS[kind] = _COUNTS.get(kind, 0) + 1
    if action == "kill" and _COUNTS[kind] == int(n):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
