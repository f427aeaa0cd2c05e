"""Protocols are data: a versioned YAML file describing an ordered concept stream.

A protocol is named by a built-in or third-party entry point (group ``cifc_bench.protocols``, value
``package:file.yaml``) or given as a path::

    spec = load_protocol("cifc10")                  # YAML only: no data needed
    seq = spec.bind(resolve_data_dir("cifc10"))     # a validated TaskSequence over a local copy
    problems = spec.check_data(root)                # everything wrong with that copy, one line each

Every error names the file, the field and the bad value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cifc_bench.api import TOKEN_MARK, Box, Concept, MultiConceptPrompt, Task, TaskSequence, Track
from cifc_bench.core.registry import PROTOCOLS, list_plugins, unknown_name_error

KINDS = ("object", "style")
CONCEPT_FIELDS = {
    "name", "class_word", "kind", "placeholders", "initializers", "images", "captions", "caption_phrase",
    "prompt_set", "eval_replacement",
    "generator",  # opaque to the core: what the protocol's data generator renders for this concept
}


class ProtocolError(ValueError):
    """A protocol file, or the data it points at, is invalid."""


@dataclass(frozen=True)
class ProtocolSpec:
    """A parsed, schema-checked protocol file, not yet bound to a data folder."""

    path: Path
    raw: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def version(self) -> str:
        return str(self.raw["version"])

    @property
    def defaults(self) -> Mapping[str, Any]:
        return self.raw.get("defaults", {})

    @property
    def dataset(self) -> str:
        return self.raw.get("data", {}).get("dataset", self.name)

    @property
    def checksum_file(self) -> Path | None:
        name = self.raw.get("data", {}).get("checksums")
        return self.path.parent / name if name else None

    @property
    def generator(self) -> str | None:
        """Entry ``package.module:function`` that writes this protocol's data when it is generated, not fetched."""
        return self.raw.get("data", {}).get("generator")

    def data_root(self, cli_dir: str | Path | None = None) -> Path:
        """The data folder: rendered by the protocol's generator, or looked up (--data-dir, env, cache)."""
        if self.generator:
            from cifc_bench.core.registry import import_object

            return Path(import_object(self.generator)(cli_dir))
        from cifc_bench.core.data import resolve_data_dir

        return resolve_data_dir(self.dataset, cli_dir)

    @property
    def schedules(self) -> Mapping[str, Any]:
        """Named per-task training schedules (``schedules.<name>.tasks``: one ``{steps, lr_scale}`` per task)."""
        return self.raw.get("schedules") or {}

    def task_budgets(self, schedule: str, steps: int) -> list[dict[str, Any]]:
        """Per task, the ``steps`` and ``lr_scale`` of ``schedule``; ``shared`` gives every task ``steps`` at 1×."""
        from cifc_bench.core.config import SHARED, ConfigError

        if schedule == SHARED:
            return [{"steps": int(steps), "lr_scale": 1.0} for _ in self.raw["concepts"]]
        if schedule not in self.schedules:
            raise ConfigError(f"--schedule {schedule!r}: protocol {self.name!r} ({self.path}) defines "
                              f"{[SHARED, *self.schedules]}; pick one of them")
        return [{"steps": int(t["steps"]), "lr_scale": float(t.get("lr_scale", 1.0))}
                for t in self.schedules[schedule]["tasks"]]

    def _err(self, field: str, value: Any, fix: str) -> ProtocolError:
        return ProtocolError(f"{self.path}: field {field!r} has bad value {value!r}: {fix}")

    def check_data(self, root: Path, verify_checksums: bool = True) -> list[str]:
        """Every problem with the data folder ``root``, one sentence each; empty means usable."""
        from cifc_bench.core.data import verify_checksums as verify
        from cifc_bench.core.images import check_image, list_images

        problems: list[str] = []
        if not Path(root).is_dir():
            return [f"data folder {root} does not exist"]
        for i, c in enumerate(self.raw["concepts"]):
            where = f"{self.path.name}: concepts[{i}] ({c['name']})"
            folder = Path(root) / c["images"]
            if not folder.is_dir():
                problems.append(f"{where}: image folder {folder} (field 'images') does not exist")
                continue
            images = list_images(folder)
            if not images:
                problems.append(f"{where}: image folder {folder} (field 'images') holds no images")
            problems.extend(f"{where}: {msg}" for p in images if (msg := check_image(p)))
            if c.get("captions"):
                cap_dir = Path(root) / c["captions"]
                if not cap_dir.is_dir():
                    problems.append(f"{where}: caption folder {cap_dir} (field 'captions') does not exist")
                else:
                    problems.extend(
                        f"{where}: image {p.name} has no caption {cap_dir / (p.stem + '.txt')}"
                        for p in images
                        if not (cap_dir / f"{p.stem}.txt").exists()
                    )
        if verify_checksums and self.checksum_file is not None:
            problems.extend(verify(Path(root), self.checksum_file))
        return problems

    def bind(self, root: Path, check: bool = True) -> TaskSequence:
        """The TaskSequence over the data in ``root``; raises ProtocolError listing every data problem."""
        root = Path(root)
        if check:
            problems = self.check_data(root)
            if problems:
                shown = "\n  - ".join(problems[:20])
                more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
                raise ProtocolError(
                    f"data for protocol {self.name!r} in {root} is not usable:\n  - {shown}{more}\n"
                    f"Fix or re-fetch it (`cifc-bench data fetch {self.dataset}`)."
                )
        sets = self.raw["prompt_sets"]
        tasks = []
        for i, c in enumerate(self.raw["concepts"]):
            concept = Concept(
                name=c["name"],
                placeholders=tuple(c["placeholders"]),
                initializers=tuple(c["initializers"]),
                class_word=c["class_word"],
                kind=c["kind"],
                image_dir=root / c["images"],
                caption_dir=(root / c["captions"]) if c.get("captions") else None,
                prompt_set=c["prompt_set"],
                eval_replacement=c["eval_replacement"],
                eval_prompts=tuple(p.replace(TOKEN_MARK, c["eval_replacement"]) for p in sets[c["prompt_set"]]),
                caption_phrase=c.get("caption_phrase") or c["class_word"],
                generator=c.get("generator"),
            )
            tasks.append(Task(index=i, concepts=(concept,)))
        multi = tuple(
            MultiConceptPrompt(
                prompt=m["prompt"],
                concepts=tuple(m["concepts"]),
                boxes=tuple(Box(*b) for b in m["boxes"]) if m.get("boxes") else None,
                region_prompts=tuple(m["region_prompts"]) if m.get("region_prompts") else None,
            )
            for m in self.raw.get("multi_concept_prompts", [])
        )
        concepts = [c for t in tasks for c in t.concepts]
        return TaskSequence(
            name=self.name, version=self.version, tasks=tuple(tasks), multi_concept_prompts=multi,
            default_model=self.defaults.get("model"), default_scorer=self.defaults.get("scorer"),
            source=self.path, reference_results=self.raw.get("reference_results", {}),
            tracks=tuple(self._bind_track(name, t, concepts) for name, t in (self.raw.get("tracks") or {}).items()),
        )

    @property
    def track_names(self) -> tuple[str, ...]:
        return tuple(self.raw.get("tracks") or {})

    def _bind_track(self, name: str, raw: Mapping[str, Any], concepts: list[Concept]) -> Track:
        """A track over the bound data: its input candidates as (concept, image path), the listed ones or, by
        default, the object concepts' images dealt round-robin (each object's first image, then its second, ...)."""
        images = {c.name: c.image_paths() if c.image_dir.is_dir() else () for c in concepts}  # () unchecked, no data
        if raw.get("inputs"):
            inputs = []
            for k, (concept, index) in enumerate(raw["inputs"]):
                if not images[concept]:
                    continue
                if index >= len(images[concept]):
                    raise self._err(f"tracks.{name}.inputs[{k}]", [concept, index],
                                    f"concept {concept!r} has {len(images[concept])} images in the data folder")
                inputs.append((concept, images[concept][index]))
        else:
            objects = [c.name for c in concepts if c.kind == "object"]
            depth = max((len(images[c]) for c in objects), default=0)
            inputs = [(c, images[c][k]) for k in range(depth) for c in objects if k < len(images[c])]
        return Track(name=name, kind=raw["kind"], prompt=raw["prompt"], strength=float(raw.get("strength", 1.0)),
                     box=Box(*raw["box"]) if raw.get("box") else None, inputs=tuple(inputs),
                     inputs_per_concept=int(raw.get("inputs_per_concept", 4)), metrics=tuple(raw["metrics"]),
                     description=raw.get("description", ""))


def protocol_path(name_or_path: str) -> Path:
    """A YAML path as given, or the file behind a registered protocol name."""
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix in (".yaml", ".yml") or as_path.exists():
        if not as_path.is_file():
            raise ProtocolError(f"protocol file {as_path} does not exist")
        return as_path
    plugins = list_plugins(PROTOCOLS)
    if name_or_path not in plugins:
        raise unknown_name_error("protocol", name_or_path, list(plugins),
                                 forms="Give a registered name, or the path to a protocol YAML file "
                                       "(e.g. ./my_protocol.yaml).")
    package, _, filename = plugins[name_or_path].value.partition(":")
    path = Path(str(resources.files(package).joinpath(filename)))
    if not path.is_file():
        raise ProtocolError(
            f"protocol {name_or_path!r} is registered as {plugins[name_or_path].value!r}, but {path} does not exist"
        )
    return path


def protocol_or_default(name: str | None) -> str:
    """``name``, or the installed default protocol when none is given (the one place this is decided)."""
    return name if name is not None else default_protocol()


def default_protocol() -> str:
    """The registered protocol whose file says ``default: true`` (the one ``cifc-bench run`` uses without
    ``--protocol``); exactly one may say so."""
    from cifc_bench.core.config import ConfigError

    names = list(list_plugins(PROTOCOLS))
    marked = [n for n in names if (yaml.safe_load(protocol_path(n).read_text()) or {}).get("default") is True]
    if len(marked) != 1:
        raise ConfigError(f"{'no' if not marked else 'more than one'} installed protocol is marked `default: true` "
                          f"({marked or names}); pass --protocol NAME (registered: {names})")
    return marked[0]


def load_protocol(name_or_path: str) -> ProtocolSpec:
    """Parse and schema-check a protocol; the data folder is checked later by :meth:`ProtocolSpec.bind`."""
    path = protocol_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProtocolError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: the top level must be a mapping with name, version, concepts, prompt_sets")
    spec = ProtocolSpec(path=path, raw=raw)
    try:
        _check_schema(spec)
    except ProtocolError:
        raise
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as err:  # a shape no check foresaw
        raise ProtocolError(f"{path}: malformed protocol ({type(err).__name__}: {err}); compare its fields with "
                            "docs/reference/protocols.md") from err
    return spec


#: every key a protocol file may hold, per place; any other is an error naming it (a misspelt key would
#: otherwise be ignored silently, as ``region_prompts`` once was)
TOP_FIELDS = {"name", "version", "description", "default", "data", "defaults", "schedules", "concepts", "tracks",
              "multi_concept_prompts", "prompt_sets", "reference_results"}
DATA_FIELDS = {"dataset", "checksums", "generator"}
SCHEDULE_FIELDS = {"description", "tasks"}
MULTI_FIELDS = {"prompt", "concepts", "boxes", "region_prompts"}


def _check_keys(spec: ProtocolSpec, where: str, mapping: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        place = f"{where}.{unknown[0]}" if where else unknown[0]
        raise spec._err(place, mapping[unknown[0]], f"unknown key {unknown[0]!r}; the known keys here are {sorted(known)}")


def _check_schema(spec: ProtocolSpec) -> None:
    raw, err = spec.raw, spec._err
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


def _check_region_prompts(spec: ProtocolSpec, f: str, m: Mapping[str, Any], concepts: Mapping[str, Any]) -> None:
    """``region_prompts``: one string per box, each naming its own concept's evaluation phrase."""
    regions = m.get("region_prompts")
    if regions is None:
        return
    if not m.get("boxes"):
        raise spec._err(f"{f}.region_prompts", regions, "region prompts condition the boxes: give 'boxes' too")
    if not isinstance(regions, list) or len(regions) != len(m["concepts"]):
        raise spec._err(f"{f}.region_prompts", regions, f"give a list of {len(m['concepts'])} strings, one per box, "
                        "in the order of 'concepts'")
    for k, (text, name) in enumerate(zip(regions, m["concepts"], strict=True)):
        phrase = concepts[name]["eval_replacement"]
        if not isinstance(text, str) or phrase not in text:
            raise spec._err(f"{f}.region_prompts[{k}]", text, f"give the clause of concept {name!r}: a string "
                            f"containing its evaluation phrase {phrase!r}, with its context (e.g. 'a {phrase} on the "
                            "grass')")


TRACK_FIELDS = {"description", "kind", "prompt", "strength", "box", "inputs", "inputs_per_concept", "metrics"}


def _check_tracks(spec: ProtocolSpec, concepts: Mapping[str, Mapping[str, Any]]) -> None:
    """``tracks``: name -> {kind, prompt with <TOK>, strength in (0, 1], optional box, optional inputs as
    [object concept, image index] pairs, inputs_per_concept, metrics}."""
    tracks, err = spec.raw.get("tracks") or {}, spec._err
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


def _check_schedules(spec: ProtocolSpec) -> None:
    """``schedules`` has one ``{steps, lr_scale}`` entry per task; ``defaults.schedule`` names defined ones."""
    from cifc_bench.core.config import SHARED

    raw, err = spec.raw, spec._err
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


def _check_defaults(spec: ProtocolSpec) -> None:
    """``defaults`` holds run settings under their one name (as ``--x-y`` is ``x_y``), of the right type."""
    from cifc_bench.core.config import PROTOCOL_ONLY, RUN_ONLY, check_values, setting_names

    defaults = spec.raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise spec._err("defaults", defaults, "give a mapping of run settings (e.g. steps: 800)")
    allowed = sorted((set(setting_names()) - set(RUN_ONLY) - {"method_args"}) | set(PROTOCOL_ONLY))
    unknown = sorted(set(defaults) - set(allowed))
    if unknown:
        raise spec._err(f"defaults.{unknown[0]}", defaults[unknown[0]], f"not a setting a protocol gives; allowed: {allowed}")
    # method_args and schedule are per method here ({method: ...}); _check_schedules checks the schedule names
    problems = check_values({k: v for k, v in defaults.items() if k not in PROTOCOL_ONLY}, where="defaults.")
    if problems:
        raise ProtocolError(f"{spec.path}: {problems[0]}")
    metrics = defaults.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise spec._err("defaults.metrics", metrics, "give a list of metric names (cifc-bench ls metrics)")
    args = defaults.get("method_args") or {}
    if not isinstance(args, dict) or not all(isinstance(v, dict) for v in args.values()):
        raise spec._err("defaults.method_args", args, "give a mapping from method name to its arguments")
