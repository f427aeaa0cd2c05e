"""Progress for long work (data rendering, calibration, training, generation, scoring).

On a terminal: tqdm bars. When output goes to a file or a pipe: plain lines on stderr, one when a phase starts,
then every ``CIFC_BENCH_PROGRESS_EVERY`` seconds (default 15) with the count and an ETA, and one when it ends;
while a single step runs longer than that, a heartbeat line names the innermost phase still running, so a log
shows what a run is doing at least that often. ``CIFC_BENCH_PROGRESS=1`` forces bars,
``lines`` forces lines, ``0`` turns both off (the test suite does).
"""

from __future__ import annotations

import os
import sys
import threading
import time

_ACTIVE: list = []  # the line-mode phases now running, innermost last
_LOCK = threading.Lock()
_LAST = [0.0]  # when the last line was printed
_HEARTBEAT: list = []  # the one heartbeat thread, once started


def progress(iterable=None, **kwargs):
    """tqdm, or plain lines, or nothing (module docstring). Every kind has ``set_eta(seconds)``."""
    setting = os.environ.get("CIFC_BENCH_PROGRESS")
    if setting == "0":
        return _Quiet(iterable, kwargs)
    if setting == "lines" or (setting is None and not sys.stderr.isatty()):
        return _Lines(iterable, kwargs)
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    bar = tqdm(iterable, disable=False, **kwargs)
    bar.set_eta = lambda seconds: bar.set_postfix_str(f"about {_clock(seconds)} left")
    return bar


def library_bars_off() -> None:
    """Unless bars are wanted, silence the Hugging Face libraries' own bars (loading and saving weights): in a
    log their redraws are noise between the suite's lines."""
    setting = os.environ.get("CIFC_BENCH_PROGRESS")
    if setting == "1" or (setting is None and sys.stderr.isatty()):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for module in ("transformers", "diffusers", "datasets"):
        try:
            __import__(f"{module}.utils.logging", fromlist=["disable_progress_bar"]).disable_progress_bar()
        except (ImportError, AttributeError):
            pass


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class _Quiet:
    """An iterable with tqdm's small surface (set_postfix, update, close) that prints nothing."""

    def __init__(self, iterable, kwargs) -> None:
        self.iterable = iterable
        self.desc = kwargs.get("desc") or "working"
        self.total = kwargs.get("total") if kwargs.get("total") is not None else _len(iterable)
        self.n = int(kwargs.get("initial") or 0)
        self.postfix = ""
        self.eta: float | None = None  # seconds left, when the caller knows better than a linear extrapolation

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_eta(self, seconds: float) -> None:
        """Report ``seconds`` left instead of extrapolating the items done so far (their costs differ)."""
        self.eta = seconds

    def close(self) -> None:
        pass


class _Lines(_Quiet):
    """One line when the phase starts, then at most every N seconds with an ETA, and one when it ends."""

    def __init__(self, iterable, kwargs) -> None:
        super().__init__(iterable, kwargs)
        self.every = float(os.environ.get("CIFC_BENCH_PROGRESS_EVERY", 15))
        self.start = self.last = time.monotonic()
        self.first = self.n
        self.closed = False
        self._say(f"{self.desc}: started" + (f" ({self.total - self.n} to go)" if self.total else ""))
        with _LOCK:
            _ACTIVE.append(self)
            if not _HEARTBEAT:
                _HEARTBEAT.append(threading.Thread(target=_heartbeat, daemon=True, name="cifc-bench-progress"))
                _HEARTBEAT[0].start()

    def _say(self, text: str) -> None:
        _LAST[0] = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def status(self) -> str:
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        return f"{self.desc}: {count}, {_clock(time.monotonic() - self.start)} elapsed, still working"

    def update(self, n: int = 1) -> None:
        super().update(n)
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            done, elapsed = self.n - self.first, now - self.start
            eta = (f", ETA {_clock(self.eta)}" if self.eta is not None else
                   f", ETA {_clock(elapsed / done * (self.total - self.n))}" if self.total and done else "")
            count = f"{self.n}/{self.total}" if self.total else str(self.n)
            self._say(f"{self.desc}: {count}, {_clock(elapsed)} elapsed{eta}" + (f" ({self.postfix})" if self.postfix else ""))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with _LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)
            self._say(f"{self.desc}: done, {self.n - self.first} in {_clock(time.monotonic() - self.start)}"
                      + (f" ({self.postfix})" if self.postfix else ""))


def _heartbeat() -> None:
    """Say what is running when nothing has been said for a phase's interval (a long single step)."""
    while True:
        time.sleep(1.0)
        with _LOCK:
            top = _ACTIVE[-1] if _ACTIVE else None
            due = top is not None and time.monotonic() - _LAST[0] >= top.every
        if due:
            top._say(top.status())


def _len(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None
