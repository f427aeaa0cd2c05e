"""Hypothesis fuzzing: any protocol file and any result.json give a clean error naming the problem, never a
traceback from deep inside."""

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifc_bench.core.protocol import load_protocol
from cifc_bench.core.protocol_schema import ProtocolError
from cifc_bench.core.results import read_result
from cifc_bench.testing import make_tiny_protocol

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 2000), st.floats(allow_nan=False, width=32),
                    st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = make_tiny_protocol(tmp_path_factory.mktemp("fuzz"), n_concepts=3)
    return path, yaml.safe_load(path.read_text())


def _paths(raw, prefix=()):
    """Every (path, value) in a nested protocol mapping."""
    yield prefix, raw
    if isinstance(raw, dict):
        for k, v in raw.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            yield from _paths(v, (*prefix, i))


def _load_cleanly(path):
    try:
        load_protocol(str(path))
    except ProtocolError as err:
        assert str(path) in str(err)  # every message names the file


@FUZZ
@given(data=st.data())
def test_a_mutated_protocol_loads_or_fails_with_a_protocol_error(base, tmp_path, data):
    import copy

    path, raw = base
    raw = copy.deepcopy(raw)
    places = [p for p, _ in _paths(raw) if p]
    where = data.draw(st.sampled_from(places))
    parent = raw
    for key in where[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        parent[where[-1]] = data.draw(VALUES)
    elif isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent.pop(where[-1])
    target = tmp_path / "mutated.yaml"
    target.write_text(yaml.safe_dump(raw))
    _load_cleanly(target)


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_as_a_protocol_file_fails_cleanly(tmp_path, text):
    target = tmp_path / "any.yaml"
    target.write_text(text)
    _load_cleanly(target)


@pytest.fixture(scope="module")
def result_file(tmp_path_factory, base):
    from cifc_bench.run.loop import run_benchmark
    from cifc_bench.testing import tiny_run_config

    path, _ = base
    run = tmp_path_factory.mktemp("result") / "run"
    run_benchmark(tiny_run_config(path, method="base"), run)
    return (run / "result.json").read_text()


@FUZZ
@given(cut=st.integers(0, 10_000), version=st.one_of(st.none(), st.integers(), st.text(max_size=3)))
def test_a_truncated_or_foreign_result_file_is_a_clean_error(result_file, tmp_path, cut, version):
    folder = tmp_path / "r"
    folder.mkdir(exist_ok=True)
    text = result_file[: cut % (len(result_file) + 1)]
    if version is not None and cut % 2:
        data = json.loads(result_file)
        data["schema_version"] = version
        text = json.dumps(data)
    (folder / "result.json").write_text(text)
    try:
        data = read_result(folder)
    except ValueError as err:  # json.JSONDecodeError is a ValueError too
        assert "result.json" in str(err)
    else:
        assert data["schema_version"] == 1 and not math.isnan(len(data))
