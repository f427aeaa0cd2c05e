"""``replay``, the upper-bound reference: what it trains on at each task, and for how many steps."""

import pytest
import torch

from cifc_bench.api import TrainBudget


def _replay_calls(tiny_protocol, monkeypatch, tasks=3, **kwargs):
    """Train ``replay`` on the first tasks with the trainer recorded: (concept names, steps) per task."""
    from cifc_bench.methods import replay

    from cifc_bench.core.protocol import load_protocol
    from cifc_bench.diffusion.models import load_bundle

    calls, real = [], replay.train_lora_and_tokens

    def recorded(bundle, task, budget, *args, **kw):
        calls.append(([c.name for c in task.concepts], budget.steps))
        return real(bundle, task, budget, *args, **kw)

    monkeypatch.setattr(replay, "train_lora_and_tokens", recorded)
    seq = load_protocol(str(tiny_protocol)).bind(tiny_protocol.with_name("tiny-data"))
    torch.manual_seed(0)
    method = replay.Replay(load_bundle("tiny-random"), **kwargs)
    for k, task in enumerate(seq.tasks[:tasks]):
        method.learn_task(task, TrainBudget(steps=2 + k, batch_size=2, resolution=32, seed=task.index))
    return method, seq, calls


def test_replay_trains_on_every_seen_concept_with_their_budgets_summed(tiny_protocol, monkeypatch):
    """Cumulative, as avalanche's strategy: task t trains on the union of the t concepts for the sum of their
    own budgets, so the newest concept gets its full budget as under ``finetune`` and the older ones theirs again.
    A resumed run knows the earlier budgets from the state."""
    method, seq, calls = _replay_calls(tiny_protocol, monkeypatch)
    names = [c.name for t in seq.tasks[:3] for c in t.concepts]
    assert calls == [(names[:1], 2), (names[:2], 2 + 3), (names[:3], 2 + 3 + 4)]
    from cifc_bench.methods.replay import Replay

    from cifc_bench.diffusion.models import load_bundle

    restored = Replay(load_bundle("tiny-random"))
    restored.load_state_dict(method.state_dict(), seq.tasks[:3])
    assert restored.task_steps == [2, 3, 4] and [c.name for c in restored.seen] == names


def test_replay_on_the_task_budget_spreads_it_over_the_seen_concepts(tiny_protocol, monkeypatch):
    """Version 1's budget, kept as ``budget=task``: the same union, for the task's own steps only."""
    _, seq, calls = _replay_calls(tiny_protocol, monkeypatch, budget="task")
    names = [c.name for t in seq.tasks[:3] for c in t.concepts]
    assert calls == [(names[:1], 2), (names[:2], 3), (names[:3], 4)]


def test_an_unknown_replay_budget_is_refused_with_the_choices():
    from cifc_bench.methods.replay import Replay

    with pytest.raises(ValueError, match="budget='joint' is not one of: 'cumulative'"):
        Replay(None, budget="joint")


@pytest.mark.parametrize("args", [{}, {"budget": "task"}])
def test_the_dry_run_counts_the_steps_replay_trains(tiny_protocol, monkeypatch, args):
    """``--dry-run`` and the progress line's time left count replay's own steps, not the budget's: T(T+1)/2
    budgets under ``cumulative``."""
    from pathlib import Path

    from cifc_bench.run.plan import work_plan
    from cifc_bench.run.setup import resolve_run
    from cifc_bench.testing import tiny_run_config

    config, spec, method_cls, budgets = resolve_run(tiny_run_config(tiny_protocol, method="replay", method_args=args))
    plan = work_plan(config, spec.bind(Path("."), check=False), budgets, method_cls=method_cls)
    steps = [b["steps"] for b in budgets]
    _, _, calls = _replay_calls(tiny_protocol, monkeypatch, tasks=len(steps), **args)
    trained = [n for _, n in calls]  # _replay_calls gives task k the budget 2 + k
    assert list(method_cls.optimisation_steps([2 + k for k in range(len(steps))], config.method_args)) == trained
    expected = [sum(steps[: k + 1]) for k in range(len(steps))] if not args else steps
    assert list(plan.train_steps) == expected and (args or plan.total_train_steps > sum(steps))


def test_the_time_left_divides_replays_training_time_by_its_own_steps(tiny_protocol):
    """The progress line's rate per step comes from the steps the method trained, not the budget's: replay's
    task 3 trains 3 budgets, so a constant rate per step is measured as constant."""
    from pathlib import Path

    from cifc_bench.run.loop import measured_rates
    from cifc_bench.run.plan import work_plan
    from cifc_bench.run.setup import resolve_run
    from cifc_bench.testing import tiny_run_config

    config, spec, method_cls, budgets = resolve_run(tiny_run_config(tiny_protocol, method="replay"))
    plan = work_plan(config, spec.bind(Path("."), check=False), budgets, method_cls=method_cls)
    rows = [{"index": k, "steps": budgets[k]["steps"], "train_seconds": 0.5 * plan.train_steps[k]}
            for k in range(len(budgets))]
    assert measured_rates(plan, rows, prior=lambda step: 0.0)[0] == pytest.approx(0.5)
