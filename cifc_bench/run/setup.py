"""Resolving and building a run: the protocol, the method class and the per-task budgets from one
:class:`~cifc_bench.core.config.RunSpec`, then the model, the scorer, the metrics and the method, bound into a
:class:`~cifc_bench.evaluation.context.RunContext`. A typo fails in :func:`resolve_run`, before any data or
model is touched."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cifc_bench.core.config import AUTO, FALLBACKS, ConfigError, RunSpec
from cifc_bench.core.distributed import SINGLE, Ranks
from cifc_bench.core.seeding import derive_seed
from cifc_bench.core.task_order import in_order, reordered
from cifc_bench.evaluation.context import DINO_METRIC, METRICS, RunContext


def resolve_run(config: RunSpec):
    """(resolved config, protocol spec, method class, per-task budgets) of ``config``: everything a run is
    before any data or model is touched (a typo in the method or schedule fails here, at once)."""
    from cifc_bench.core.protocol import load_protocol, protocol_or_default
    from cifc_bench.core.registry import load_method

    method_cls = load_method(config.method)
    config = dataclasses.replace(config, protocol=protocol_or_default(config.protocol))
    spec = load_protocol(config.protocol)
    config = config.resolved(dict(spec.defaults), registered_names(method_cls))
    if config.tracks is None:
        config = dataclasses.replace(config, tracks=spec.track_names)
    unknown = [t for t in config.tracks if t not in spec.track_names]
    if unknown:
        raise ConfigError(f"--tracks {','.join(config.tracks)}: protocol {spec.name!r} has no track {unknown[0]!r}; it "
                          f"defines {list(spec.track_names) or 'none'} (--tracks none evaluates no track)")
    budgets = in_order(spec.task_budgets(config.schedule, config.steps), config.task_order)  # a budget stays with its concept
    return config, spec, method_cls, budgets


def run_sequence(spec, config: RunSpec, root: Path | None = None, check: bool = True):
    """The protocol's task stream over its data (``root``, else the run's data folder), in the run's task order."""
    sequence = reordered(spec.bind(spec.data_root(config.data_dir) if root is None else root, check=check),
                         config.task_order)
    if config.retention_prompts is not None:  # the first N generic prompts, as --prompts-per-concept takes N
        sequence = dataclasses.replace(sequence, retention_prompts=sequence.retention_prompts[: config.retention_prompts])
    return sequence


def load_context(config: RunSpec, run_dir: Path, calibration: dict[str, Any] | None = None,
                 with_method: bool = True, ranks: Ranks = SINGLE, base_images: bool = True) -> RunContext:
    """Bind the protocol to its data and load model, scorer and method for ``config``.

    The neglect rate's presence thresholds are calibrated here (or taken from ``calibration``, a resumed run's
    own), on the base model before the method can touch it. Without ``with_method`` (rescoring saved images)
    no method is built and nothing can be generated. Under a launcher (``ranks``), each process takes its own
    device and the calibration images are dealt out among the processes. ``base_images`` False leaves the base
    model's retention images undrawn (``--dry-run``'s warm-up times one of them, not all).
    """
    from cifc_bench.diffusion.scoring import load_scorer

    config, spec, method_cls, budgets = resolve_run(config)
    config = dataclasses.replace(config, device=ranks.device(config.device))
    sequence = run_sequence(spec, config)
    if config.prompts_per_concept > min(len(c.eval_prompts) for c in sequence.concepts):
        raise ConfigError(
            f"--prompts-per-concept {config.prompts_per_concept} exceeds the smallest prompt set of "
            f"{spec.name!r} ({min(len(c.eval_prompts) for c in sequence.concepts)} prompts)"
        )
    bundle, fingerprint = fresh_bundle(config)
    if with_method:
        check_family(method_cls, bundle, config)  # before the calibration and the base model's images
    scorer = load_scorer(config.scorer, config.device)
    dino = None
    if config.dino and config.dino != "none":
        from cifc_bench.diffusion.dino import load_dino

        dino = load_dino(config.dino, config.device)
    metrics = tuple(spec.defaults.get("metrics", METRICS))
    if dino is not None:
        metrics = (*metrics, DINO_METRIC)
    encoders = image_encoders(config.image_encoders or (), config.device, taken=metrics)
    metrics = (*metrics, *encoders)
    track_metrics = [m for t in sequence.tracks if t.name in config.tracks for m in t.metrics]
    metric_fns = load_metrics(dict.fromkeys([*metrics, *track_metrics, *sequence.retention_metrics]), spec.path)
    presence_fns = load_metrics(spec.defaults.get("presence", ()), spec.path, key="presence")
    ctx = RunContext(config=config, sequence=sequence, method=None, scorer=scorer, run_dir=Path(run_dir),
                     metrics=metrics, dino=dino, encoders=encoders, calibration=calibration,
                     model_fingerprint=fingerprint, budgets=budgets, metric_fns=metric_fns, presence_fns=presence_fns, ranks=ranks)
    if config.eval_batch_size == AUTO:  # fixed now, and recorded: a resumed run keeps the same batches
        with ctx.precision():
            config = dataclasses.replace(config, eval_batch_size=fitting_batch_size(bundle, config))
        ctx = dataclasses.replace(ctx, config=config)
    if calibration is None and sequence.multi_concept_prompts:
        from cifc_bench.core.data import cache_dir
        from cifc_bench.evaluation.neglect import calibrate_thresholds

        with ctx.precision():
            calibration = calibrate_thresholds(bundle, scorer, sequence, config.generation(),
                                               config.calibration_images, config.model, cache_dir() / "cnr-thresholds",
                                               ranks=ranks)
    if with_method and base_images and sequence.retention_prompts and ranks.main:  # the base model's, first
        from cifc_bench.evaluation.retention import generate_base_images

        with ctx.precision():
            generate_base_images(ctx, bundle)
    ranks.barrier()
    method = build_method(method_cls, bundle, config) if with_method else None
    return dataclasses.replace(ctx, method=method, calibration=calibration)


def image_encoders(names, device: str, taken=()) -> dict[str, Any]:
    """{metric: encoder} of ``--image-encoders``; two encoders (or an encoder and a protocol metric) that would
    write one metric are an error naming both."""
    from cifc_bench.diffusion.dino import load_dino

    out: dict[str, Any] = {}
    for name in names:
        encoder = load_dino(name, device)
        metric = getattr(encoder, "metric", f"ia_{name.replace('-', '_')}")
        if metric in out or metric in taken:
            raise ConfigError(f"--image-encoders {','.join(names)}: {name!r} gives {metric}, which the run already "
                              "measures (another encoder, --dino or the protocol's metrics); keep one of them")
        out[metric] = encoder
    return out


#: batch sizes ``--eval-batch-size auto`` tries, largest first
AUTO_CANDIDATES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)


def fitting_batch_size(bundle, config: RunSpec, fits=None) -> int:
    """``--eval-batch-size auto``: the largest batch whose guided sampling step fits the device's memory, halved
    for what methods add (CCS's U + 2 evaluations per step with two boxes, per-sample merged weights). Off CUDA
    there is nothing to measure: the fallback batch (8). ``fits(n)`` tells whether n images fit (default: one
    guided step of the base model at the run's resolution, out of memory or not)."""
    import torch

    if fits is None:
        if torch.device(config.device).type != "cuda":
            return int(FALLBACKS["eval_batch_size"])
        fits = _one_step_fits(bundle, config)
    for n in AUTO_CANDIDATES:
        if fits(n):
            return max(1, n // 2)
    raise ConfigError(f"--eval-batch-size auto: not even one image of {config.resolution} px fits on {config.device}; "
                      "free the device's memory, or lower --resolution")


def _one_step_fits(bundle, config: RunSpec):
    import torch

    from cifc_bench.diffusion.sampling import generate_batched

    def fits(n: int) -> bool:
        settings = dataclasses.replace(config.generation(), num_inference_steps=1, batch_size=n)
        try:
            with torch.no_grad():  # at the run's precision: the caller enters it
                generate_batched(bundle, ["a photo"] * n, list(range(n)), settings)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    return fits


def fresh_bundle(config: RunSpec):
    """The base model as published, at the run's precision, and the fingerprint of its published weights."""
    from cifc_bench.core.precision import cast_frozen
    from cifc_bench.diffusion.models import load_bundle

    fast_fp32_matmuls(config.device)
    bundle = load_bundle(config.model, config.device)
    fingerprint = model_fingerprint(bundle)  # of the weights as published, whatever precision the run uses
    cast_frozen(bundle, config.dtype)
    if config.compile:
        from cifc_bench.diffusion.models import compile_bundle

        compile_bundle(bundle)
    return bundle, fingerprint


def check_family(method_cls, bundle, config: RunSpec) -> None:
    """Refuse, before any work, a method that does not run on the bundle's model family (SDXL, issue 38), and
    SDXL's own VAE under fp16: it overflows there (its config says ``force_upcast``), and the images would be
    NaN. The fp16-fix VAE (``force_upcast`` false) in the model folder's ``vae/`` runs."""
    from cifc_bench.diffusion.sdxl import SDXL, family

    kind = family(bundle)
    supported = getattr(method_cls, "families", ("sd1",))
    if kind not in supported:
        raise ConfigError(f"method {config.method!r} does not run on {kind} models yet (model {config.model!r}; it "
                          f"runs on {', '.join(supported)}): pick an SD-1.x model, or a method that lists {kind} "
                          "in Method.families (every built-in method does)")
    if kind == SDXL and config.dtype == "fp16" and getattr(bundle.vae.config, "force_upcast", False):
        raise ConfigError(f"--dtype fp16 with model {config.model!r}: SDXL's VAE overflows in fp16 (its config sets "
                          "force_upcast) and would draw NaN images. Use --dtype bf16 (the CUDA default) or fp32, or "
                          "put the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix, force_upcast false) in the model "
                          "folder's vae/")


def build_method(method_cls, bundle, config: RunSpec):
    """A new method on ``bundle`` with the run's arguments; its adapters are initialised from the run seed."""
    import torch

    check_family(method_cls, bundle, config)
    accepted = method_arguments(method_cls)
    unknown = sorted(set(config.method_args) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"method {config.method!r} has no argument(s) {unknown}; it accepts: "
                          f"{', '.join(accepted) or 'none'} (--method-args KEY=VALUE)")
    torch.manual_seed(derive_seed("method-init", config.seed))  # adapters initialised at construction
    try:
        return method_cls(bundle, **config.method_args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"method {config.method!r} rejected its arguments {config.method_args}: {err}") from err


def fast_fp32_matmuls(device: str | None) -> bool:
    """On CUDA, fp32 matrix products and convolutions run on TF32 tensor cores (10 mantissa bits in the
    products, fp32 accumulation), as diffusers' own training scripts allow; a CPU run is left as it is.
    Returns whether TF32 is on (recorded in ``run_info.tf32``)."""
    import torch

    if not str(device or "").startswith("cuda"):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def load_metrics(names, source, key: str = "metrics") -> dict[str, Any]:
    """The metric functions (or, ``key="presence"``, the presence checks) named by a protocol's
    ``defaults.<key>`` (entry-point groups ``cifc_bench.metrics`` / ``cifc_bench.presence``, or
    ``package.module:function``); an unknown name is the protocol's error and lists the registered ones."""
    from cifc_bench.core.registry import METRICS, PRESENCE, PluginError, list_plugins, load_component

    group, kind = (PRESENCE, "presence check") if key == "presence" else (METRICS, "metric")
    fns = {}
    for name in names:
        try:
            fns[name] = load_component(group, name, kind)
        except PluginError as err:
            raise ConfigError(f"{source}: defaults.{key} names {kind} {name!r}, which does not load: {err} "
                              f"(registered: {list(list_plugins(group))})") from err
    return fns


def method_arguments(method_cls) -> list[str] | None:
    """The keyword arguments a method's constructor takes (None when it takes ``**kwargs``: anything goes)."""
    import inspect

    params = list(inspect.signature(method_cls.__init__).parameters.values())[2:]  # self, bundle
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def registered_names(method_cls) -> tuple[str, ...]:
    """The names under which ``method_cls`` is registered (protocol arguments follow the class, not the name)."""
    from cifc_bench.core.registry import METHODS, list_plugins

    path = f"{method_cls.__module__}:{method_cls.__qualname__}"
    return tuple(n for n, ep in list_plugins(METHODS).items() if ep.value == path)


def scorer_fingerprint(scorer) -> str:
    """A digest of the scorer's weights: scores made with different weights under one name must not be mixed."""
    from cifc_bench.evaluation.neglect import weights_fingerprint

    return weights_fingerprint(scorer.model)


def model_fingerprint(bundle) -> str:
    """A digest of the base model's weights: runs on different weights under one model name are not comparable."""
    from cifc_bench.evaluation.neglect import weights_fingerprint

    return weights_fingerprint(*(m for m in (bundle.unet, bundle.text_encoder, bundle.vae) if m is not None))
