"""Load a page in headless Chromium and collect its console errors, over the DevTools protocol on a pipe.

Chromium's headless mode does not print console messages, so the test speaks the DevTools protocol itself:
``--remote-debugging-pipe`` reads NUL-terminated JSON commands on fd 3 and writes events on fd 4.
Errors collected: ``console.error`` calls, uncaught exceptions, and log entries of level error (a resource
that fails to load, such as a missing image, is one).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.w, self.r, self.buf, self.next_id = write_fd, read_fd, b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def read(self, deadline: float) -> dict | None:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                return None
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)


def _as_fds_3_and_4(read_fd: int, write_fd: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4, inheritable (via copies, in case one already is 3 or 4)."""
    r, w = os.dup(read_fd), os.dup(write_fd)
    os.dup2(r, 3)
    os.dup2(w, 4)


def console_errors(page: Path, timeout: float = 60.0) -> list[str]:
    """Open ``page`` (a local file) and return every console error, failed load and uncaught exception."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="cifc-chromium-")
    # the child reads commands on fd 3 and writes on fd 4
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
         f"--user-data-dir={profile}", "about:blank"],
        close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # fds 3 and 4 must survive
        preexec_fn=lambda: _as_fds_3_and_4(to_child_r, from_child_w),
    )
    os.close(to_child_r)
    os.close(from_child_w)
    pipe, errors = _Pipe(to_child_w, from_child_r), []
    deadline = time.monotonic() + timeout
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})
        session, loaded, settle_until = None, False, None
        while True:
            msg = pipe.read(settle_until if loaded else deadline)
            if msg is None:
                if loaded:  # nothing more arrived in the second after the load event
                    break
                raise TimeoutError(f"Chromium did not finish loading {page} within {timeout} s")
            if msg.get("id") == target:
                pipe.send("Target.attachToTarget", {"targetId": msg["result"]["targetId"], "flatten": True})
            elif msg.get("method") == "Target.attachedToTarget" and session is None:
                session = msg["params"]["sessionId"]
                for domain in ("Runtime", "Log", "Page"):
                    pipe.send(f"{domain}.enable", session=session)
                pipe.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
            elif msg.get("method") == "Page.loadEventFired":
                loaded, settle_until = True, time.monotonic() + 1.0
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                     for a in msg["params"]["args"]))
            elif msg.get("method") == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(msg["params"]["exceptionDetails"].get("text")))
            elif msg.get("method") == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
                entry = msg["params"]["entry"]
                errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
            if loaded and time.monotonic() > settle_until:
                break
    finally:
        proc.kill()
        proc.wait()
        os.close(to_child_w)
        os.close(from_child_r)
        shutil.rmtree(profile, ignore_errors=True)
    return errors
