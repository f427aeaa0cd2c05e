"""Generate with what a run learned: ``cifc-bench generate RUN_DIR --prompt "a photo of {dog1} on the beach"``.

The run's method is restored from its state after the last task (or ``after_task``) on the run's own model and
settings, so an image here is what the run's evaluation would have drawn for that prompt and seed. A learned
concept is named in braces and expands to the phrase the protocol evaluates it with (its placeholder tokens,
e.g. ``{dog1}`` -> ``<dog1> <dog1b>``). With one box per named concept the request is a multi-concept one: the
methods that condition regions (CIDM's context-controllable synthesis, Mix-of-Show's regional sampler) read
the boxes and, optionally, a prompt per region.

With an input image the model redraws it: ``--init-image PATH --strength S`` is style transfer (SDEdit: the
input noised to S, then denoised with the prompt, e.g. "a photo in the style of {style1}"), and
``--init-image PATH --mask-box y0,x0,y1,x1`` is editing (only the box changes, e.g. "{dog1} on the grass"),
for every method through the shared sampler (:class:`cifc_bench.diffusion.sampling.Trajectory`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from cifc_bench.api import Box, Concept, GenerationRequest, ImageInit

_BRACES = re.compile(r"\{([^{}]*)\}")


class GenerateError(ValueError):
    """A generate request that cannot be served; the message names the bad value and the fix."""


def expand_prompt(prompt: str, learned: Mapping[str, Concept]) -> tuple[str, tuple[Concept, ...]]:
    """``prompt`` with every ``{name}`` of a learned concept replaced by its evaluation phrase, and those
    concepts in order of first mention."""
    used: list[Concept] = []

    def replace(match: re.Match) -> str:
        name = match.group(1).strip()
        if name not in learned:
            raise GenerateError(f"prompt {prompt!r} names {{{name}}}, which this run has not learned; learned: "
                                f"{', '.join(learned) or 'none'} (write them in braces, e.g. {{{next(iter(learned), 'dog1')}}})")
        if learned[name] not in used:
            used.append(learned[name])
        return learned[name].eval_replacement

    return " ".join(_BRACES.sub(replace, prompt).split()), tuple(used)


def parse_boxes(items: Sequence[str]) -> dict[str, Box]:
    """``CONCEPT=y0,x0,y1,x1`` (fractions of the image) -> {concept: Box}."""
    out = {}
    for item in items:
        name, sep, coords = item.partition("=")
        parts = coords.split(",")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if not sep or not name or len(values) != 4:
            raise GenerateError(f"--box {item!r}: write CONCEPT=y0,x0,y1,x1 with four fractions of the image, e.g. "
                                "--box dog1=0.2,0.05,0.8,0.5")
        try:
            out[name.strip()] = Box(*values)
        except ValueError as err:
            raise GenerateError(f"--box {item!r}: {err}") from err
    return out


def parse_regions(items: Sequence[str], learned: Mapping[str, Concept]) -> dict[str, str]:
    """``CONCEPT=TEXT`` -> {concept: region prompt}, braces expanded as in the main prompt."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise GenerateError(f"--region-prompt {item!r}: write CONCEPT=TEXT, e.g. --region-prompt "
                                "'dog1=a {dog1} wearing a red hat'")
        out[name.strip()] = expand_prompt(text, learned)[0]
    return out


def image_init(path: str | Path | None, strength: float | None = None, mask_box: str | None = None) -> ImageInit | None:
    """The input image of ``--init-image`` with ``--strength`` (style transfer) or ``--mask-box`` (editing;
    strength 1 unless given), or None without one; each bad value gets an error naming it."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        if strength is not None or mask_box is not None:
            raise GenerateError(f"{'--strength' if strength is not None else '--mask-box'} needs --init-image PATH: "
                                "it says how to redraw (or where to edit) an input image")
        return None
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"--init-image {path}: no such file; give the path of an image (PNG, JPEG)")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise GenerateError(f"--init-image {path}: not a readable image ({err})") from err
    box = None
    if mask_box is not None:
        try:
            box = Box(*(float(v) for v in mask_box.split(",")))
        except (TypeError, ValueError) as err:
            raise GenerateError(f"--mask-box {mask_box!r}: write y0,x0,y1,x1, four fractions of the image with "
                                f"y0 < y1 and x0 < x1 (e.g. --mask-box 0.25,0.25,0.75,0.75): {err}") from err
    if strength is None and box is None:
        raise GenerateError("--init-image without --mask-box is style transfer: give --strength S in (0, 1], "
                            "e.g. --strength 0.6 (higher redraws more)")
    try:
        return ImageInit(image=image, strength=1.0 if strength is None else strength, box=box)
    except ValueError as err:
        raise GenerateError(f"--strength {strength}: {err}") from err


def requests_for(prompt: str, learned: Mapping[str, Concept], n: int, seed: int, boxes: Mapping[str, Box] | None = None,
                 regions: Mapping[str, str] | None = None, init: ImageInit | None = None) -> list[GenerationRequest]:
    """``n`` requests (seeds ``seed`` .. ``seed + n - 1``) for a prompt, boxed when boxes are given, from an input
    image when ``init`` is given."""
    if n < 1:
        raise GenerateError(f"--n {n}: give a whole number >= 1")
    text, concepts = expand_prompt(prompt, learned)
    boxes, regions = dict(boxes or {}), dict(regions or {})
    names = [c.name for c in concepts]
    for name in [*boxes, *regions]:
        if name not in names:
            raise GenerateError(f"{name!r} has a box or region prompt but the prompt does not name it; the prompt "
                                f"names {names or 'no learned concept'} (write {{{name}}} in it)")
    if regions and not boxes:
        raise GenerateError("--region-prompt needs --box: a region prompt conditions the region of its box")
    if boxes and set(boxes) != set(names):
        missing = [x for x in names if x not in boxes]
        raise GenerateError(f"give a box for every concept the prompt names ({', '.join(names)}), or none: "
                            f"missing {', '.join(missing)}")
    box_list = tuple(boxes[x] for x in names) if boxes else None
    region_list = tuple(regions.get(x, f"a {c.eval_replacement}") for x, c in zip(names, concepts, strict=True)) \
        if regions else None
    return [GenerationRequest(prompt=text, seed=seed + k, concepts=concepts, boxes=box_list, region_prompts=region_list,
                              init=init) for k in range(n)]


def restore(run_dir: Path, after_task: int | None = None, device: str | None = None):
    """The run's context with its method restored after task ``after_task`` (1-based; default the last
    finished), and that task's number."""
    from cifc_bench.core.checkpoint import load_state
    from cifc_bench.core.config import RunSpec
    from cifc_bench.core.results import read_result
    from cifc_bench.evaluation.context import RunContext
    from cifc_bench.run.rundir import state_path
    from cifc_bench.run.setup import build_method, fresh_bundle, resolve_run, run_sequence

    result = read_result(run_dir)
    done = len(result["tasks"])
    if done == 0:
        raise GenerateError(f"{run_dir} has no finished task yet: nothing was learned to generate with")
    j = done if after_task is None else after_task
    if not 1 <= j <= done:
        raise GenerateError(f"--after-task {after_task}: {run_dir} finished tasks 1 to {done}")
    config = RunSpec.from_dict(result["run_info"]["config"])
    if device:
        config = dataclasses.replace(config, device=device)
    state = state_path(run_dir, j - 1)
    if not state.is_file():
        kept = sorted(int(p.stem.rsplit("_", 1)[-1]) + 1 for p in state.parent.glob("after_task_*.safetensors"))
        raise GenerateError(f"--after-task {j}: {run_dir} keeps the state after task "
                            f"{', '.join(map(str, kept)) or 'none'} only ({state} is missing; committed reference runs "
                            "keep just the final state). Pick a kept task, or re-run the method to have them all")
    config, spec, method_cls, _ = resolve_run(config)
    sequence = run_sequence(spec, config)
    method = build_method(method_cls, fresh_bundle(config)[0], config)  # no scorer: nothing is scored here
    method.load_state_dict(load_state(state), sequence.tasks[:j])
    return RunContext(config=config, sequence=sequence, method=method, scorer=None, run_dir=run_dir), j


def learned_concepts(ctx, after_task: int) -> dict[str, Concept]:
    return {c.name: c for c in ctx.sequence.concepts[:after_task]}


def write_outputs(images: Sequence, requests: Sequence[GenerationRequest], out: Path, asked: Mapping) -> Path:
    """The images, a grid of them (``grid.png``, boxes outlined) and ``request.json`` in ``out``."""
    from cifc_bench.core.images import save_atomic

    out.mkdir(parents=True, exist_ok=True)
    for k, (image, request) in enumerate(zip(images, requests, strict=True)):
        save_atomic(image, out / f"{k:03d}_s{request.seed}.png")
    init = requests[0].init
    tiles, boxes = list(images), requests[0].boxes
    if init is not None:  # the input first, at the images' size
        tiles.insert(0, init.image.convert("RGB").resize(images[0].size))
        boxes = (*(boxes or ()), init.box) if init.box is not None else boxes
    save_atomic(grid(tiles, boxes, columns=min(len(tiles), 8)), out / "grid.png")  # one row for the usual few
    (out / "request.json").write_text(json.dumps({**asked, "expanded_prompt": requests[0].prompt,
                                                  "seeds": [r.seed for r in requests]}, indent=2))
    return out / "grid.png"


GRID_TILE = 128  # smaller images are enlarged in the grid (nearest neighbour) to at least this many pixels


def grid(images: Sequence, boxes: Sequence[Box] | None = None, columns: int = 4):
    """The images in rows of ``columns``, each box outlined (the grid only; saved images stay untouched).
    Images smaller than :data:`GRID_TILE` (the synthetic world's 32 pixels) are enlarged, pixels kept sharp."""
    from PIL import Image, ImageDraw

    scale = -(-GRID_TILE // min(images[0].size))
    if scale > 1:
        images = [im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    w, h = images[0].size
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for k, image in enumerate(images):
        tile = image.convert("RGB").copy()
        draw = ImageDraw.Draw(tile)
        for box in boxes or ():
            y0, x0, y1, x1 = box.as_tuple()
            draw.rectangle([x0 * w, y0 * h, x1 * w - 1, y1 * h - 1], outline=(255, 255, 0))
        sheet.paste(tile, ((k % cols) * w, (k // cols) * h))
    return sheet


def generate_from_run(run_dir: Path, prompt: str, n: int = 4, seed: int = 0, out: Path | None = None,
                      after_task: int | None = None, boxes: Sequence[str] = (), regions: Sequence[str] = (),
                      device: str | None = None, init_image: str | Path | None = None, strength: float | None = None,
                      mask_box: str | None = None) -> tuple[Path, list]:
    """Restore the run, generate ``n`` images of ``prompt`` (from ``init_image``, when given) and write them;
    returns (grid path, images)."""
    boxed = parse_boxes(boxes)  # malformed input fails before the model loads
    init = image_init(init_image, strength, mask_box)
    ctx, j = restore(Path(run_dir), after_task, device)
    learned = learned_concepts(ctx, j)
    requests = requests_for(prompt, learned, n, seed, boxed, parse_regions(regions, learned), init)
    images = ctx.generate(requests)
    out = out or Path("generated") / f"{Path(run_dir).name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    asked = {"run": str(run_dir), "after_task": j, "prompt": prompt, "n": n, "seed": seed, "boxes": list(boxes),
             "region_prompts": list(regions), "init_image": None if init_image is None else str(init_image),
             "strength": None if init is None else init.strength, "mask_box": mask_box}
    return write_outputs(images, requests, Path(out), asked), images
