"""Task order as an axis: --task-order, sweep --orders, results by concept name, and the leaderboard's order table."""

import copy

import numpy as np
import pytest

from cifc_bench.core.config import ConfigError, RunSpec
from cifc_bench.core.results import run_identity
from cifc_bench.core.task_order import in_order, permutation
from cifc_bench.reporting.intervals import unit_table
from cifc_bench.reporting.orders import order_table
from cifc_bench.reporting.runs import RunRecord
from cifc_bench.run.loop import run_benchmark
from cifc_bench.run.sweep import SweepError, expand
from cifc_bench.testing import tiny_run_config


def test_orders_are_permutations_and_a_bad_order_names_the_value_and_the_fix():
    assert permutation("protocol", 4) == (0, 1, 2, 3)
    assert permutation("reversed", 4) == (3, 2, 1, 0)
    shuffled = permutation("random:7", 10)
    assert sorted(shuffled) == list(range(10)) and shuffled != tuple(range(10))
    assert permutation("random:7", 10) == shuffled and permutation("random:8", 10) != shuffled
    assert in_order("abc", "reversed") == ("c", "b", "a")
    with pytest.raises(ConfigError, match=r"--task-order 'backwards': use 'protocol'.*'reversed' or 'random:SEED'"):
        RunSpec(task_order="backwards")
    with pytest.raises(SweepError, match="--orders 'random:x'"):
        expand(["finetune"], [0], {}, "runs", "synth10", orders=["random:x"])


def test_a_run_in_the_protocol_order_keeps_the_identity_it_had_before_orders_existed():
    result = {"run_info": {"protocol": {"name": "p", "version": "1"}, "method": "m", "method_args": {},
                           "config": {"seed": 0, "steps": 2}}}
    with_order = copy.deepcopy(result)
    with_order["run_info"]["config"]["task_order"] = "protocol"
    reversed_ = copy.deepcopy(result)
    reversed_["run_info"]["config"]["task_order"] = "reversed"
    assert run_identity(with_order) == run_identity(result) != run_identity(reversed_)


def test_sweep_orders_cross_the_seeds_and_keep_the_protocol_orders_folders(tmp_path):
    jobs = expand(["finetune", "base"], [0, 1], {}, tmp_path, "synth10", orders=["protocol", "reversed"],
                  one_seed=["base"])
    names = sorted(str(j.run_dir.relative_to(tmp_path)) for j in jobs)
    assert names == ["synth10/base/s0", "synth10/finetune/order=reversed_s0", "synth10/finetune/order=reversed_s1",
                     "synth10/finetune/s0", "synth10/finetune/s1"]
    reversed_jobs = [j for j in jobs if "order=" in j.run_dir.name]
    assert all(j.settings["task_order"] == "reversed" for j in reversed_jobs)
    assert "--task-order" in reversed_jobs[0].argv() and "--task-order" not in jobs[0].argv()


def test_a_reversed_run_learns_the_last_concept_first_and_pairs_with_the_protocol_order_by_name(tmp_path,
                                                                                                 tiny_protocol):
    """``base`` learns nothing and each concept keeps its image seeds, so its scores per concept are the same in
    both orders: the leaderboard's per-concept columns and interval units must line up by name, not position."""
    forward = run_benchmark(tiny_run_config(tiny_protocol, method="base", eval_schedule="final"), tmp_path / "fwd")
    backward = run_benchmark(tiny_run_config(tiny_protocol, method="base", eval_schedule="final",
                                             task_order="reversed"), tmp_path / "bwd")
    assert backward["concepts"] == forward["concepts"][::-1]
    assert backward["run_info"]["config"]["task_order"] == "reversed"
    f_last, b_last = forward["matrices"]["ia"][-1], backward["matrices"]["ia"][-1]
    assert b_last == f_last[::-1] and f_last[0] != f_last[-1]  # the same scores, in the run's own order
    runs = [RunRecord(tmp_path / "fwd", forward), RunRecord(tmp_path / "bwd", backward)]
    assert runs[1].label == "base [order reversed]"
    np.testing.assert_array_equal(unit_table(runs[0], "ia", "final"), unit_table(runs[1], "ia", "final"))
    from cifc_bench.reporting.leaderboard import metric_table

    table = metric_table("ia", runs, forward["concepts"], None).set_index("method")
    assert (table.loc["base", forward["concepts"]] == table.loc["base [order reversed]", forward["concepts"]]).all()


def _fake_run(order: str, seed: int, finals: list[float], concepts=("a", "b", "c", "d")) -> RunRecord:
    """A completed run whose final row holds ``finals`` per concept (protocol order) and whose diagonal is 0.9."""
    n = len(concepts)
    pos = permutation(order, n)
    R = [[(0.9 if i == j else finals[pos[i]]) if i <= j else None for i in range(n)] for j in range(n)]
    R[-1] = [finals[pos[i]] for i in range(n)]
    data = {"run_info": {"method": "m", "method_args": {}, "config": {"task_order": order, "seed": seed}},
            "concepts": [concepts[p] for p in pos], "tasks": [{"index": j} for j in range(n)], "matrices": {"ia": R},
            "summary": {}}
    return RunRecord(f"/runs/{order}/s{seed}", data)


def test_the_order_table_says_when_order_moves_the_final_score_and_when_it_does_not():
    rng = np.random.default_rng(0)
    base = np.array([0.3, 0.5, 0.4, 0.6])
    same = [_fake_run(o, s, list(base + rng.normal(0, 0.005, 4))) for o in ("protocol", "reversed") for s in range(3)]
    table = order_table("ia", same)
    assert table is not None and table.loc[0, "orders"] == 2
    assert table.loc[0, "order moves final at 95 %"] == "no"
    moved = [_fake_run("protocol", s, list(base + rng.normal(0, 0.005, 4))) for s in range(3)]
    moved += [_fake_run("random:1", s, list(base + 0.2 + rng.normal(0, 0.005, 4))) for s in range(3)]
    row = order_table("ia", moved).iloc[0]
    assert row["order moves final at 95 %"] == "random:1"
    assert row["each order − protocol"].startswith("random:1 +20.")
    assert float(row["spread over orders"]) == pytest.approx(20, abs=1) and float(row["spread over seeds"]) < 2
    assert order_table("ia", moved[:3]) is None  # one order: nothing to compare
