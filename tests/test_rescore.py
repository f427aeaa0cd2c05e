"""Rescoring a run from its saved images: the numbers a fresh run with that scorer gives, no generation."""

import copy
import json

import pytest

from cifc_bench.cli import main
from cifc_bench.core.config import ConfigError
from cifc_bench.reporting.runs import find_runs
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.rescore import rescore_run
from cifc_bench.testing import tiny_run_config


@pytest.fixture(scope="module")
def other_scorer():
    """A second tiny scorer (other random weights), addressed like any local open_clip weights file."""
    from cifc_bench.diffusion.scoring import _TINY_ARCH, _tiny_random_weights

    return f"open_clip:{_TINY_ARCH}:{_tiny_random_weights(seed=1)}"


def test_rescoring_gives_a_fresh_runs_numbers_and_keeps_the_old_ones(tmp_path, tiny_protocol, other_scorer):
    run = tmp_path / "tiny" / "base" / "run"
    original = run_benchmark(tiny_run_config(tiny_protocol, method="base"), run)

    same = rescore_run(run)  # same scorer: same images, same numbers
    assert same["matrices"] == original["matrices"]
    assert same["neglect"]["matrices"] == original["neglect"]["matrices"]

    rescored = rescore_run(run, scorer=other_scorer)
    fresh = run_benchmark(tiny_run_config(tiny_protocol, method="base", scorer=other_scorer),
                          tmp_path / "tiny" / "base" / "fresh")
    assert rescored["matrices"] != original["matrices"]
    assert rescored["matrices"] == fresh["matrices"]
    assert rescored["summary"] == fresh["summary"]
    assert rescored["neglect"]["calibration"] == fresh["neglect"]["calibration"]
    assert rescored["neglect"]["matrices"] == fresh["neglect"]["matrices"]
    info = rescored["run_info"]
    assert info["scorer"] == info["config"]["scorer"] == other_scorer
    assert info["scorer_fingerprint"] == fresh["run_info"]["scorer_fingerprint"] != original["run_info"]["scorer_fingerprint"]
    assert [r["summary"] for r in info["rescores"]] == [original["summary"], same["summary"]]
    assert json.loads((run / "result.json").read_text())["matrices"] == fresh["matrices"]

    # the leaderboard never mixes scorer weights: the run scored with the old weights is left out, with the fix
    stale = copy.deepcopy(original)
    stale["run_info"]["config"]["scorer"] = stale["run_info"]["scorer"] = other_scorer
    (tmp_path / "tiny" / "base" / "stale").mkdir()
    (tmp_path / "tiny" / "base" / "stale" / "result.json").write_text(json.dumps(stale))
    runs, skipped = find_runs(tmp_path / "tiny", original["run_info"]["protocol"]["name"], include_dirty=True)
    # the rescored run and the fresh one are one run by identity (same settings, seed, weights and scorer)
    assert len(runs) == 1 and runs[0].path.parent.name in ("fresh", "run")
    assert len(skipped) == 2 and any("stale" in s and "cifc-bench rescore" in s for s in skipped)
    assert any("the same run as" in s and "counted once" in s for s in skipped)


def test_a_missing_image_fails_without_touching_the_result(tmp_path, tiny_protocol):
    run = tmp_path / "run"
    run_benchmark(tiny_run_config(tiny_protocol, method="base"), run)
    before = (run / "result.json").read_bytes()
    victim = sorted((run / "images" / "after_task_01").rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(ConfigError, match=f"lacks 1 of the run's images \\(first: {victim.name}\\)"):
        rescore_run(run)
    assert (run / "result.json").read_bytes() == before


def test_cli_rescore_names_a_folder_without_a_run(tmp_path, capsys):
    assert main(["rescore", str(tmp_path)]) == 2
    assert f"no result.json in {tmp_path}" in capsys.readouterr().err
