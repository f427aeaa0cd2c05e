"""What a protocol file may say: its fields at every level, their types, the region prompts of its multi-concept
prompts, its tracks, schedules and defaults. An unknown key anywhere is an error that names it and the known ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from cifc_bench.api import TOKEN_MARK, Box

KINDS = ("object", "style")


CONCEPT_FIELDS = {
    "name", "class_word", "kind", "placeholders", "initializers", "images", "captions", "caption_phrase",
    "prompt_set", "eval_replacement",
    "generator",  # opaque to the core: what the protocol's data generator renders for this concept
}


class ProtocolError(ValueError):
    """A protocol file, or the data it points at, is invalid."""


#: every key a protocol file may hold, per place; any other is an error naming it (a misspelt key would
#: otherwise be ignored silently, as ``region_prompts`` once was)
TOP_FIELDS = {"name", "version", "description", "default", "data", "defaults", "schedules", "concepts", "tracks",
              "multi_concept_prompts", "prompt_sets", "reference_results", "retention"}


RETENTION_FIELDS = {"prompts", "images_per_prompt", "metrics"}


DATA_FIELDS = {"dataset", "checksums", "generator"}


SCHEDULE_FIELDS = {"description", "tasks"}


MULTI_FIELDS = {"prompt", "concepts", "boxes", "region_prompts"}


class ProtocolFile(Protocol):
    """What the checks read of a parsed protocol file (:class:`cifc_bench.core.protocol.ProtocolSpec`)."""

    path: Path
    raw: Mapping[str, Any]

    def field_error(self, field: str, value: Any, fix: str) -> ProtocolError: ...


def _check_keys(spec: ProtocolFile, where: str, mapping: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        place = f"{where}.{unknown[0]}" if where else unknown[0]
        raise spec.field_error(place, mapping[unknown[0]], f"unknown key {unknown[0]!r}; the known keys here are {sorted(known)}")


def check_schema(spec: ProtocolFile) -> None:
    raw, err = spec.raw, spec.field_error
    for key in ("name", "version", "concepts", "prompt_sets"):
        if key not in raw:
            raise ProtocolError(f"{spec.path}: missing required top-level field {key!r}")
    _check_keys(spec, "", raw, TOP_FIELDS)
    if raw.get("data") is not None:
        if not isinstance(raw["data"], dict):
            raise err("data", raw["data"], "give a mapping with dataset, checksums and optional generator")
        _check_keys(spec, "data", raw["data"], DATA_FIELDS)
    if not isinstance(raw.get("default", False), bool):
        raise err("default", raw["default"], "give true (the protocol runs without --protocol) or false")
    sets = raw["prompt_sets"]
    if not isinstance(sets, dict) or not sets:
        raise err("prompt_sets", sets, "give a mapping from set name to a list of prompts")
    for set_name, prompts in sets.items():
        if not isinstance(prompts, list) or not prompts:
            raise err(f"prompt_sets.{set_name}", prompts, "give a non-empty list of prompts")
        for j, p in enumerate(prompts):
            if not isinstance(p, str) or TOKEN_MARK not in p:
                raise err(f"prompt_sets.{set_name}[{j}]", p, f"every prompt must be a string containing {TOKEN_MARK}")
    concepts = raw["concepts"]
    if not isinstance(concepts, list) or not concepts:
        raise err("concepts", concepts, "give a non-empty list, one concept per task in task order")
    names: set[str] = set()
    owner: dict[str, str] = {}
    for i, c in enumerate(concepts):
        f = f"concepts[{i}]"
        if not isinstance(c, dict):
            raise err(f, c, "each concept is a mapping")
        missing = {"name", "class_word", "kind", "placeholders", "initializers", "images", "prompt_set",
                   "eval_replacement"} - set(c)
        if missing:
            raise err(f, c.get("name", c), f"missing field(s) {sorted(missing)}")
        unknown = set(c) - CONCEPT_FIELDS
        if unknown:
            raise err(f, c["name"], f"unknown field(s) {sorted(unknown)}; allowed: {sorted(CONCEPT_FIELDS)}")
        for key in ("name", "class_word", "kind", "images", "prompt_set", "eval_replacement"):
            if not isinstance(c[key], str) or not c[key]:
                raise err(f"{f}.{key}", c[key], "give a non-empty string")
        for key in ("captions", "caption_phrase"):
            if c.get(key) is not None and not isinstance(c[key], str):
                raise err(f"{f}.{key}", c[key], "give a string (or leave the field out)")
        if c["name"] in names:
            raise err(f"{f}.name", c["name"], "concept names must be unique across tasks")
        names.add(c["name"])
        if c["kind"] not in KINDS:
            raise err(f"{f}.kind", c["kind"], f"use one of {KINDS}")
        if c["prompt_set"] not in sets:
            raise err(f"{f}.prompt_set", c["prompt_set"], f"unknown prompt set; defined sets: {sorted(sets)}")
        ph, init = c["placeholders"], c["initializers"]
        if not isinstance(ph, list) or not ph or not all(isinstance(t, str) and t.strip() == t and t for t in ph):
            raise err(f"{f}.placeholders", ph, "give a non-empty list of single tokens like '<dog1>'")
        if not isinstance(init, list) or len(init) != len(ph):
            raise err(f"{f}.initializers", init, f"give one initializer (a word or a std-dev) per placeholder ({len(ph)})")
        for v in init:
            if isinstance(v, bool) or not (isinstance(v, str) or (isinstance(v, (int, float)) and v > 0)):
                raise err(f"{f}.initializers", v, "each initializer is a word or a positive std-dev")
        for t in ph:
            if t in owner:
                raise err(f"{f}.placeholders", t, f"placeholder already used by concept {owner[t]!r}; tokens "
                          "must be new in every task")
            owner[t] = c["name"]
        if " ".join(ph) not in c["eval_replacement"]:
            raise err(f"{f}.eval_replacement", c["eval_replacement"], f"must contain the placeholders {' '.join(ph)!r}")
    _check_defaults(spec)
    _check_schedules(spec)
    _check_tracks(spec, {c["name"]: c for c in concepts})
    _check_retention(spec)
    for k, m in enumerate(raw.get("multi_concept_prompts") or []):
        f = f"multi_concept_prompts[{k}]"
        if not isinstance(m, dict) or "prompt" not in m or "concepts" not in m:
            raise err(f, m, "give a mapping with 'prompt', 'concepts' and optional 'boxes' and 'region_prompts'")
        _check_keys(spec, f, m, MULTI_FIELDS)
        if not isinstance(m["prompt"], str) or not isinstance(m["concepts"], list):
            raise err(f, m, "'prompt' is a string and 'concepts' a list of concept names")
        if m.get("boxes") is not None and not (isinstance(m["boxes"], list) and all(isinstance(b, list) for b in m["boxes"])):
            raise err(f"{f}.boxes", m["boxes"], "give a list of [y0, x0, y1, x1] boxes, one per concept")
        for name in m["concepts"]:
            if name not in names:
                raise err(f"{f}.concepts", name, f"unknown concept; known: {sorted(map(str, names))}")
        boxes = m.get("boxes")
        if boxes is not None:
            if len(boxes) != len(m["concepts"]):
                raise err(f"{f}.boxes", boxes, "give exactly one box per concept, in the same order")
            for b in boxes:
                try:
                    Box(*b)
                except (TypeError, ValueError) as e:
                    raise err(f"{f}.boxes", b, str(e)) from e
        _check_region_prompts(spec, f, m, {c["name"]: c for c in concepts})


def _check_region_prompts(spec: ProtocolFile, f: str, m: Mapping[str, Any], concepts: Mapping[str, Any]) -> None:
    """``region_prompts``: one string per box, each naming its own concept's evaluation phrase."""
    regions = m.get("region_prompts")
    if regions is None:
        return
    if not m.get("boxes"):
        raise spec.field_error(f"{f}.region_prompts", regions, "region prompts condition the boxes: give 'boxes' too")
    if not isinstance(regions, list) or len(regions) != len(m["concepts"]):
        raise spec.field_error(f"{f}.region_prompts", regions, f"give a list of {len(m['concepts'])} strings, one per box, "
                        "in the order of 'concepts'")
    for k, (text, name) in enumerate(zip(regions, m["concepts"], strict=True)):
        phrase = concepts[name]["eval_replacement"]
        if not isinstance(text, str) or phrase not in text:
            raise spec.field_error(f"{f}.region_prompts[{k}]", text, f"give the clause of concept {name!r}: a string "
                            f"containing its evaluation phrase {phrase!r}, with its context (e.g. 'a {phrase} on the "
                            "grass')")


TRACK_FIELDS = {"description", "kind", "prompt", "strength", "box", "inputs", "inputs_per_concept", "metrics"}


def _check_retention(spec: ProtocolFile) -> None:
    """``retention``: generic prompts without any learned token, how many images each, and the metrics applied
    to them beside ``drift`` (default ``ta``)."""
    part, err = spec.raw.get("retention"), spec.field_error
    if part is None:
        return
    if not isinstance(part, dict):
        raise err("retention", part, "give a mapping with prompts, images_per_prompt and optional metrics")
    _check_keys(spec, "retention", part, RETENTION_FIELDS)
    prompts = part.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise err("retention.prompts", prompts, "give a non-empty list of generic prompts")
    for j, p in enumerate(prompts):
        if not isinstance(p, str) or not p or TOKEN_MARK in p or "<" in p:
            raise err(f"retention.prompts[{j}]", p, "give a prompt without any learned token (no <...>, no "
                      f"{TOKEN_MARK}): retention asks what the model still draws for words it was never taught")
    n = part.get("images_per_prompt", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise err("retention.images_per_prompt", n, "give a whole number >= 1")
    metrics = part.get("metrics", ["ta"])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise err("retention.metrics", metrics, "give a list of metric names (cifc-bench ls metrics), e.g. [ta]")


def _check_tracks(spec: ProtocolFile, concepts: Mapping[str, Mapping[str, Any]]) -> None:
    """``tracks``: name -> {kind, prompt with <TOK>, strength in (0, 1], optional box, optional inputs as
    [object concept, image index] pairs, inputs_per_concept, metrics}."""
    tracks, err = spec.raw.get("tracks") or {}, spec.field_error
    if not isinstance(tracks, dict):
        raise err("tracks", tracks, "give a mapping from track name to {kind, prompt, strength, box, metrics}")
    for name, t in tracks.items():
        f = f"tracks.{name}"
        if not isinstance(t, dict) or not {"kind", "prompt", "metrics"} <= set(t):
            raise err(f, t, "give a mapping with 'kind', 'prompt' and 'metrics' (and optional strength, box, inputs)")
        if set(t) - TRACK_FIELDS:
            raise err(f"{f}.{sorted(set(t) - TRACK_FIELDS)[0]}", t, f"unknown field; known: {sorted(TRACK_FIELDS)}")
        if t["kind"] not in KINDS:
            raise err(f"{f}.kind", t["kind"], f"use one of {KINDS}: the kind of learned concept the track applies")
        if not isinstance(t["prompt"], str) or TOKEN_MARK not in t["prompt"]:
            raise err(f"{f}.prompt", t["prompt"], f"give a string containing {TOKEN_MARK} (and optionally {{input}})")
        s = t.get("strength", 1.0)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
            raise err(f"{f}.strength", s, "give a number in (0, 1]: the fraction of the sampler's steps to redo")
        if t.get("box") is not None:
            try:
                Box(*t["box"])
            except (TypeError, ValueError) as e:
                raise err(f"{f}.box", t["box"], str(e)) from e
        n = t.get("inputs_per_concept", 4)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise err(f"{f}.inputs_per_concept", n, "give a whole number >= 1")
        if not isinstance(t["metrics"], list) or not t["metrics"] or not all(isinstance(m, str) for m in t["metrics"]):
            raise err(f"{f}.metrics", t["metrics"], "give a non-empty list of metric names (cifc-bench ls metrics)")
        for k, item in enumerate(t.get("inputs") or []):
            ok = isinstance(item, list) and len(item) == 2 and item[0] in concepts and isinstance(item[1], int) \
                and not isinstance(item[1], bool) and item[1] >= 0
            if not ok or concepts[item[0]]["kind"] != "object":
                raise err(f"{f}.inputs[{k}]", item, f"give [object concept, image index]; objects: "
                          f"{sorted(n for n, c in concepts.items() if c['kind'] == 'object')}")


def _check_schedules(spec: ProtocolFile) -> None:
    """``schedules`` has one ``{steps, lr_scale}`` entry per task; ``defaults.schedule`` names defined ones."""
    from cifc_bench.core.config import SHARED

    raw, err = spec.raw, spec.field_error
    schedules = raw.get("schedules") or {}
    if not isinstance(schedules, dict):
        raise err("schedules", schedules, "give a mapping from schedule name to {description, tasks}")
    n_tasks = len(raw["concepts"])
    for name, sched in schedules.items():
        f = f"schedules.{name}"
        if name == SHARED:
            raise err(f, name, f"{SHARED!r} is the built-in schedule (defaults.steps for every task); rename it")
        if isinstance(sched, dict):
            _check_keys(spec, f, sched, SCHEDULE_FIELDS)
        tasks = sched.get("tasks") if isinstance(sched, dict) else None
        if not isinstance(tasks, list) or len(tasks) != n_tasks:
            raise err(f"{f}.tasks", tasks, f"give a list of {n_tasks} entries, one {{steps, lr_scale}} per task")
        for j, t in enumerate(tasks):
            if not isinstance(t, dict) or set(t) - {"steps", "lr_scale"} or "steps" not in t:
                raise err(f"{f}.tasks[{j}]", t, "give a mapping with 'steps' and an optional 'lr_scale'")
            if isinstance(t["steps"], bool) or not isinstance(t["steps"], int) or t["steps"] < 0:
                raise err(f"{f}.tasks[{j}].steps", t["steps"], "give a whole number >= 0")
            scale = t.get("lr_scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
                raise err(f"{f}.tasks[{j}].lr_scale", scale, "give a positive number (1 keeps the method's rates)")
    chosen = (raw.get("defaults") or {}).get("schedule") or {}
    if not isinstance(chosen, dict):
        raise err("defaults.schedule", chosen, "give a mapping from method name to schedule name")
    for method, name in chosen.items():
        if name != SHARED and name not in schedules:
            raise err(f"defaults.schedule.{method}", name, f"unknown schedule; defined: {[SHARED, *schedules]}")


def _check_defaults(spec: ProtocolFile) -> None:
    """``defaults`` holds run settings under their one name (as ``--x-y`` is ``x_y``), of the right type."""
    from cifc_bench.core.config import PROTOCOL_ONLY, RUN_ONLY, check_values, setting_names

    defaults = spec.raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise spec.field_error("defaults", defaults, "give a mapping of run settings (e.g. steps: 800)")
    allowed = sorted((set(setting_names()) - set(RUN_ONLY) - {"method_args"}) | set(PROTOCOL_ONLY))
    unknown = sorted(set(defaults) - set(allowed))
    if unknown:
        raise spec.field_error(f"defaults.{unknown[0]}", defaults[unknown[0]], f"not a setting a protocol gives; allowed: {allowed}")
    # method_args and schedule are per method here ({method: ...}); _check_schedules checks the schedule names
    problems = check_values({k: v for k, v in defaults.items() if k not in PROTOCOL_ONLY}, where="defaults.")
    if problems:
        raise ProtocolError(f"{spec.path}: {problems[0]}")
    metrics = defaults.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise spec.field_error("defaults.metrics", metrics, "give a list of metric names (cifc-bench ls metrics)")
    args = defaults.get("method_args") or {}
    if not isinstance(args, dict) or not all(isinstance(v, dict) for v in args.values()):
        raise spec.field_error("defaults.method_args", args, "give a mapping from method name to its arguments")
