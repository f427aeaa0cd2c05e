"""Plugin discovery through Python entry points, one group per kind of component; the built-ins register
the same way as third parties (``pyproject.toml``), and so does the synthetic tier.

| kind | group | an entry point names |
|---|---|---|
| method | ``cifc_bench.methods`` | a :class:`~cifc_bench.api.Method` subclass |
| protocol | ``cifc_bench.protocols`` | a YAML resource, ``package:file.yaml`` |
| model | ``cifc_bench.models`` | a function returning a diffusers folder (or a ``ModelBundle``) |
| scorer | ``cifc_bench.scorers`` | a function ``(device) -> Scorer`` |
| image encoder | ``cifc_bench.image_encoders`` | a function ``(device) -> ImageEncoder`` (``ia_dino``'s DINO) |
| metric | ``cifc_bench.metrics`` | a pure function ``(ConceptImages) -> float`` |
| presence check | ``cifc_bench.presence`` | a pure function ``(image, Concept, Box or None) -> bool``: an exact neglect check |
| command | ``cifc_bench.commands`` | a function adding a sub-command to the CLI's sub-parsers |

Listing never imports a plugin (``cifc-bench ls methods`` stays free of torch); only the one asked for is
loaded::

    names = list_plugins(METHODS)            # {"base": EntryPoint(...), "finetune": ...}
    cls = load_method("finetune")           # imports only cifc_bench.methods.finetune
    cls = load_method("mypkg.mymod:MyMethod")  # no installation needed
    fn = load_component(METRICS, "ia")      # any kind: a registered name or package.module:attr
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import EntryPoint, entry_points

METHODS = "cifc_bench.methods"
PROTOCOLS = "cifc_bench.protocols"
MODELS = "cifc_bench.models"
SCORERS = "cifc_bench.scorers"
IMAGE_ENCODERS = "cifc_bench.image_encoders"
METRICS = "cifc_bench.metrics"
PRESENCE = "cifc_bench.presence"
COMMANDS = "cifc_bench.commands"
LOGGERS = "cifc_bench.loggers"
#: ``cifc-bench ls KIND`` -> entry-point group
KINDS = {"methods": METHODS, "protocols": PROTOCOLS, "models": MODELS, "scorers": SCORERS,
         "image-encoders": IMAGE_ENCODERS, "metrics": METRICS, "presence": PRESENCE,
         "commands": COMMANDS, "loggers": LOGGERS}


class PluginError(LookupError):
    """A plugin name that is unknown, duplicated or does not load."""


def list_plugins(group: str) -> dict[str, EntryPoint]:
    """Entry points of ``group`` by name; two distributions claiming one name is an error."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            first, second = found[ep.name], ep
            raise PluginError(
                f"two plugins in entry-point group {group!r} are named {ep.name!r}: {first.value!r} "
                f"(from {_dist_name(first)}) and {second.value!r} (from {_dist_name(second)}); "
                "uninstall one or rename its entry point"
            )
        found[ep.name] = ep
    return dict(sorted(found.items()))


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "unknown distribution"


def unknown_name_error(kind: str, name: str, known: list[str], forms: str | None = None) -> PluginError:
    """``forms`` says what else may be given; by default a ``package.module:Name`` import path."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    forms = forms or f"A {kind} from your own code can be given as 'package.module:Name'."
    return PluginError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known) or 'none'}. {forms}")


def load_component(group: str, name: str, kind: str):
    """The object registered as ``name`` in ``group``, or the object at ``package.module:attr``."""
    if ":" in name:
        return import_object(name)
    plugins = list_plugins(group)
    if name not in plugins:
        raise unknown_name_error(kind, name, list(plugins))
    try:
        return plugins[name].load()
    except Exception as err:  # a broken plugin must not look like an unknown one
        raise PluginError(f"{kind} {name!r} ({plugins[name].value}) failed to import: {err}") from err


def import_object(spec: str):
    """Import ``package.module:attr`` (attr may be dotted)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise PluginError(f"cannot import module {module_name!r} from {spec!r}: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise PluginError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})") from err
    return obj


def load_method(name: str):
    """The method class registered as ``name``, or the class at ``package.module:Class``."""
    from cifc_bench.api import Method

    cls = load_component(METHODS, name, "method")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"{name!r} resolves to {cls!r}, which is not a subclass of cifc_bench.api.Method")
    return cls
