"""Plugin discovery through Python entry points; the built-ins register the same way as third parties.

Listing never imports a plugin (``cifc-bench ls methods`` stays free of torch); only the one asked for is
loaded::

    names = list_plugins(METHODS)            # {"base": EntryPoint(...), "finetune": ...}
    cls = load_method("finetune")           # imports only cifc_bench.methods.finetune
    cls = load_method("mypkg.mymod:MyMethod")  # no installation needed
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import EntryPoint, entry_points

METHODS = "cifc_bench.methods"
PROTOCOLS = "cifc_bench.protocols"
SCORERS = "cifc_bench.scorers"


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


def unknown_name_error(kind: str, name: str, known: list[str]) -> PluginError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return PluginError(
        f"unknown {kind} {name!r}.{hint} Known: {', '.join(known) or 'none'}. "
        f"A {kind} from your own code can be given as 'package.module:Name'."
    )


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

    if ":" in name:
        cls = import_object(name)
    else:
        plugins = list_plugins(METHODS)
        if name not in plugins:
            raise unknown_name_error("method", name, list(plugins))
        try:
            cls = plugins[name].load()
        except Exception as err:  # a broken plugin must not look like an unknown one
            raise PluginError(f"method {name!r} ({plugins[name].value}) failed to import: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise PluginError(f"{name!r} resolves to {cls!r}, which is not a subclass of cifc_bench.api.Method")
    return cls
