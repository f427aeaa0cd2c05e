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
from cifc_bench.core.protocol_schema import ProtocolError, check_schema
from cifc_bench.core.registry import PROTOCOLS, list_plugins, unknown_name_error


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

    def field_error(self, field: str, value: Any, fix: str) -> ProtocolError:
        """The error of one bad field: the file, the field, its value and the fix."""
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
        retention = self.raw.get("retention") or {}
        return TaskSequence(
            name=self.name, version=self.version, tasks=tuple(tasks), multi_concept_prompts=multi,
            default_model=self.defaults.get("model"), default_scorer=self.defaults.get("scorer"),
            source=self.path, reference_results=self.raw.get("reference_results", {}),
            tracks=tuple(self._bind_track(name, t, concepts) for name, t in (self.raw.get("tracks") or {}).items()),
            retention_prompts=tuple(retention.get("prompts") or ()),
            retention_images=int(retention.get("images_per_prompt", 1)) if retention else 0,
            retention_metrics=tuple(retention.get("metrics", ["ta"])) if retention else (),
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
                    raise self.field_error(f"tracks.{name}.inputs[{k}]", [concept, index],
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


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProtocolError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: the top level must be a mapping with name, version, concepts, prompt_sets")
    return raw


def extended(raw: dict[str, Any], path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A protocol with ``extends: BASE`` (a registered name or a YAML path) is BASE with its own keys on top: each
    of its top-level keys replaces BASE's, except ``defaults``, merged key by key (its own win). So a variant
    (``cifc10-sdxl``: SDXL's model and resolution) keeps its base's concepts, prompts and paper numbers in one
    place. BASE's checksum file stays BASE's; its version is inherited unless given."""
    base_name = raw.get("extends")
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ProtocolError(f"{path}: extends {base_name!r}: give a registered protocol name or a YAML path")
    base_path = protocol_path(base_name)
    chain = (*chain, path.resolve())
    if base_path.resolve() in chain:
        raise ProtocolError(f"{path}: extends {base_name!r}, which extends it back: "
                            f"{' -> '.join(p.name for p in (*chain, base_path))}; remove one of the two")
    base = extended(_read(base_path), base_path, chain)
    data = dict(base.get("data") or {})
    if data.get("checksums"):
        data["checksums"] = str(base_path.parent / data["checksums"])
    inherited = {k: v for k, v in base.items() if k != "default"}  # being the default protocol is not inherited
    merged = {**inherited, "data": data, **{k: v for k, v in raw.items() if k != "extends"}}
    merged["defaults"] = {**(base.get("defaults") or {}), **(raw.get("defaults") or {})}
    return merged


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
    spec = ProtocolSpec(path=path, raw=extended(_read(path), path))
    try:
        check_schema(spec)
    except ProtocolError:
        raise
    except (TypeError, KeyError, AttributeError, IndexError, ValueError) as err:  # a shape no check foresaw
        raise ProtocolError(f"{path}: malformed protocol ({type(err).__name__}: {err}); compare its fields with "
                            "docs/reference/protocols.md") from err
    return spec
