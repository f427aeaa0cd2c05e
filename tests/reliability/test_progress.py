"""A run whose output goes to a file still says what it is doing: one line per phase, with counts and ETAs."""

import re

from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import make_tiny_protocol, tiny_run_config


def test_output_to_a_file_gets_lines_for_every_phase(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFC_BENCH_PROGRESS", "lines")
    monkeypatch.setenv("CIFC_BENCH_PROGRESS_EVERY", "0")  # every step, so the test sees the ETA lines
    monkeypatch.setenv("CIFC_BENCH_CACHE", str(tmp_path / "cache"))  # a first run: nothing calibrated yet
    protocol = make_tiny_protocol(tmp_path / "proto", n_concepts=2)
    run_benchmark(tiny_run_config(protocol), tmp_path / "run")
    err = capsys.readouterr().err
    for phase in ("calibrate presence thresholds", "tasks: started (2 to go)", "train thing0: started",
                  "train thing1: done, 2 in", "generate thing0@0", "tasks: done, 2 in"):
        assert phase in err, phase
    assert re.search(r"\[\d\d:\d\d:\d\d\] train thing0: 1/2, \d+:\d\d elapsed, ETA \d+:\d\d", err)
    assert "\r" not in err  # no bar redraws in a log


def test_quiet_when_asked(tmp_path, monkeypatch, capsys):
    from cifc_bench.core.progress import progress

    monkeypatch.setenv("CIFC_BENCH_PROGRESS", "0")
    bar = progress(range(3), desc="x")
    assert list(bar) == [0, 1, 2] and bar.n == 3
    assert capsys.readouterr().err == ""
