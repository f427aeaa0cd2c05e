"""What ``cifc-bench ls`` says of a registered component, read from its source without importing it.

Importing a method imports torch and diffusers (seconds); listing twenty components must not. So the entry
point's module is located (``importlib.util.find_spec`` runs only its parent packages) and parsed with ``ast``:
the summary is the first sentence of the object's docstring (else its module's), and a class's arguments are
its ``__init__`` parameters after ``bundle`` with their defaults, as written. A protocol's summary is its YAML
file's ``description``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Description:
    summary: str
    arguments: tuple[str, ...] = ()  # "name=default" as written in the source


def describe(value: str) -> Description:
    """The description of the entry point value ``module:object`` (or ``package:file.yaml``)."""
    module, _, attr = value.partition(":")
    origin = _source(module)
    if origin is None:
        return Description("(source not found)")
    if attr.endswith((".yaml", ".yml")):
        return _protocol(origin.parent / attr)
    return _python(origin, attr, depth=0)


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<!\bcf)\.\s")  # not "et al. ", "e.g. ", "cf. "


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    end = _SENTENCE_END.search(text + " ")
    return (text[: end.start() + 1] if end else text) or "(no description)"


def _protocol(path: Path) -> Description:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return Description("(unreadable protocol file)")
    return Description(_first_sentence(str(raw.get("description", ""))) if raw.get("description") else "(no description)")


def _python(origin: Path, attr: str, depth: int) -> Description:
    tree = ast.parse(origin.read_text())
    if not attr:
        return Description(_first_sentence(ast.get_docstring(tree)))
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == attr:
            doc = ast.get_docstring(node) or ast.get_docstring(tree)
            return Description(_first_sentence(doc), _arguments(node) if isinstance(node, ast.ClassDef) else ())
    for node in tree.body:  # re-exported: `from .method import CIDM` in a package's __init__
        if isinstance(node, ast.ImportFrom) and any(a.name == attr for a in node.names) and depth < 3:
            target = _relative_source(origin, node) if node.level else _source(node.module or "")
            if target is not None:
                return _python(target, attr, depth + 1)
    return Description(_first_sentence(ast.get_docstring(tree)))


def _relative_source(origin: Path, node: ast.ImportFrom) -> Path | None:
    """The file of ``from .x import y`` in ``origin``, found by path: importing the package to ask would run
    the very ``__init__`` that imports torch."""
    folder = origin.parent
    for _ in range(node.level - 1):
        folder = folder.parent
    stem = folder.joinpath(*(node.module or "").split(".")) if node.module else folder
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _source(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def _arguments(cls: ast.ClassDef) -> tuple[str, ...]:
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return ()
    args = init.args.args[2:]  # self, bundle
    defaults = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
    out = [f"{a.arg}={ast.unparse(d)}" if d is not None else a.arg for a, d in zip(args, defaults, strict=True)]
    out += [f"{a.arg}={ast.unparse(d)}" if d is not None else a.arg
            for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True)]
    return tuple(out)
