"""A run made twice is counted once, the second warns before it starts, and a user's runs never land among
the committed reference runs by default."""

import pytest

from cifc_bench.core.results import run_identity
from cifc_bench.reporting.leaderboard import leaderboard_tables
from cifc_bench.run.loop import run_benchmark
from cifc_bench.testing import make_tiny_protocol, tiny_run_config


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return make_tiny_protocol(tmp_path_factory.mktemp("proto"), n_concepts=2)


def test_the_same_run_twice_warns_and_counts_once(protocol, tmp_path, capsys):
    root = tmp_path / "results" / "tiny" / "base"
    first = run_benchmark(tiny_run_config(protocol, method="base"), root / "a")
    assert "is the same run" not in capsys.readouterr().err
    second = run_benchmark(tiny_run_config(protocol, method="base"), root / "b")
    err = capsys.readouterr().err
    assert f"warning: {root / 'a'} is the same run" in err and f"--resume {root / 'a'}" in err
    assert first["run_info"]["identity"] == second["run_info"]["identity"] == run_identity(second)
    other_seed = run_benchmark(tiny_run_config(protocol, method="base", seed=1), root / "c")
    assert other_seed["run_info"]["identity"] != first["run_info"]["identity"]
    tables, skipped, n = leaderboard_tables(str(protocol), tmp_path / "results", include_dirty=True)
    assert n == 2 and tables["ia"].set_index("method").loc["base", "seeds"] == 2
    assert any("the same run as" in s and "counted once" in s for s in skipped)
    # settings that do not change the numbers are not part of the identity
    moved = {**second, "run_info": {**second["run_info"], "config": {**second["run_info"]["config"], "device": "cuda"}}}
    assert run_identity(moved) == run_identity(second)
    steps = {**second, "run_info": {**second["run_info"], "config": {**second["run_info"]["config"], "steps": 9}}}
    assert run_identity(steps) != run_identity(second)


def test_runs_go_to_runs_and_leave_the_reference_results_alone(protocol, tmp_path, monkeypatch):
    from cifc_bench.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "--method", "base", "--protocol", str(protocol), "--data-dir", str(protocol.with_name("tiny-data")),
            "--model", "tiny-random", "--scorer", "tiny-random", "--prompts-per-concept", "2", "--images-per-prompt",
            "1", "--resolution", "32", "--num-inference-steps", "2"]
    assert main(argv) == 0
    assert list((tmp_path / "runs" / "tiny" / "base").glob("*/result.json"))
    assert not (tmp_path / "results").exists()
