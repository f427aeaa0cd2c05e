"""The HTML run report: every section, every referenced image on disk, and a clean load in headless Chromium."""

from html.parser import HTMLParser
from pathlib import Path

import pytest

from cifc_bench.cli import main

SECTIONS = ("summary", "matrices", "forgetting", "samples", "multi", "config")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.ids, self.external = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//", "/")):
                self.external.append(attrs[key])


def _parse(page: Path) -> _Refs:
    refs = _Refs()
    refs.feed(page.read_text(encoding="utf-8"))
    return refs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_protocol):
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    root = tmp_path_factory.mktemp("report-runs")
    runs = []
    for method in ("finetune", "base"):
        cfg = tiny_run_config(tiny_protocol, method=method, dino="tiny-random", calibration_images=4,
                              multi_images_per_prompt=2)
        run_benchmark(cfg, root / method)
        runs.append(root / method)
    return runs


def test_report_of_one_run_has_every_section_and_its_images(two_runs, tmp_path):
    page = tmp_path / "rep" / "index.html"
    assert main(["report", str(two_runs[0]), "--out", str(page.parent)]) == 0
    refs = _parse(page)
    assert set(SECTIONS) <= refs.ids
    assert not refs.external  # self-contained: relative assets only
    assert refs.images and all((page.parent / src).is_file() for src in refs.images)
    names = {Path(src).name for src in refs.images}
    for metric in ("ia", "ta", "ia_dino", "cnr"):
        assert f"heatmap_{metric}_0.png" in names
    assert {"curves_ia_0.png", "multi_0.png", "timings_0.png", "samples_00_0.png"} <= names
    text = page.read_text()
    assert "A &lt;t0a&gt; &lt;t0b&gt; next to a &lt;t1a&gt; &lt;t1b&gt;" in text  # the multi-concept prompt, escaped
    assert "presence threshold" in text and "&quot;seed&quot;: 0" in text


def test_report_compares_runs_side_by_side(two_runs, tmp_path):
    from cifc_bench.reporting.report import write_report

    page = write_report(two_runs, tmp_path / "cmp")
    refs = _parse(page)
    assert all((page.parent / src).is_file() for src in refs.images)
    names = {Path(src).name for src in refs.images}
    assert {"heatmap_ia_0.png", "heatmap_ia_1.png", "samples_01_0.png", "samples_01_1.png"} <= names
    text = page.read_text()
    assert "finetune · seed 0" in text and "base · seed 0" in text


def test_report_refuses_to_overwrite_a_run_and_names_missing_runs(two_runs, tmp_path, capsys):
    assert main(["report", str(two_runs[0]), "--out", str(two_runs[0])]) == 2
    assert "is a run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "has no result.json" in capsys.readouterr().err


def test_report_loads_in_headless_chromium_without_console_errors(two_runs, tmp_path):
    from browser import console_errors, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    from cifc_bench.reporting.report import write_report

    page = write_report(two_runs, tmp_path / "cmp")
    assert console_errors(page) == []
    # the check can fail: the same page with one image missing reports the failed load
    (page.parent / "assets" / "timings_1.png").unlink()
    errors = console_errors(page)
    assert any("timings_1.png" in e for e in errors), errors
