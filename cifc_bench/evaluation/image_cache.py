"""The evaluation's image cache: where each model state's images live in the run folder, which requests an
evaluation makes, and generating only the files that are missing (so a resumed or rescored run reuses every
image it made, and N processes share the work batch by batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifc_bench.core.config import ConfigError
from cifc_bench.core.images import load_rgb, save_atomic
from cifc_bench.core.progress import progress
from cifc_bench.evaluation.context import RunContext
from cifc_bench.evaluation.eval_requests import (
    concept_requests,
    multi_requests,
    retention_dir,
    retention_requests,
)
from cifc_bench.evaluation.tracks import track_dir, track_requests


def image_dir(run_dir: Path, task_index: int, concept: str) -> Path:
    return Path(run_dir) / "images" / f"after_task_{task_index:02d}" / concept


def multi_dir(run_dir: Path, task_index: int) -> Path:
    return Path(run_dir) / "images" / f"after_task_{task_index:02d}" / MULTI


MULTI = "_multi"  # folder of multi-concept images beside the concepts' folders (no concept name starts with _)


def evaluation_images(ctx: RunContext, j: int) -> list[tuple[list, Path]]:
    """Every (pairs, folder) the evaluation after task ``j`` generates: each learned concept's requests, then
    each multi-concept prompt whose concepts are all learned, the tracks' outputs and the generic retention
    prompts, as :func:`evaluate_task` asks for them."""
    seq, cfg = ctx.sequence, ctx.config
    out = [(concept_requests(seq.name, c, cfg.prompts_per_concept, cfg.images_per_prompt), image_dir(ctx.run_dir, j, c.name))
           for c in seq.concepts[: j + 1]]
    learned = {c.name for c in seq.concepts[: j + 1]}
    out += [(multi_requests(seq, q, cfg.multi_images_per_prompt), multi_dir(ctx.run_dir, j))
            for q, m in enumerate(seq.multi_concept_prompts) if set(m.concepts) <= learned]
    out += [([(r, name) for r, name, _ in track_pairs(ctx, track, c)], track_dir(ctx.run_dir, j, track.name, c.name))
            for track in selected_tracks(ctx) for c in track.targets(seq.concepts[: j + 1])]
    if seq.retention_prompts:
        out.append((retention_requests(seq), retention_dir(ctx.run_dir, j)))
    return out


def selected_tracks(ctx: RunContext):
    return [t for t in ctx.sequence.tracks if t.name in (ctx.config.tracks or ())]


def track_pairs(ctx: RunContext, track, concept):
    words = {c.name: c.class_word for c in ctx.sequence.concepts}
    return track_requests(ctx.sequence.name, track, concept, words, ctx.config.resolution)


def missing_batches(pairs, folder: Path, batch_size: int) -> list[list]:
    """The requests of ``pairs`` whose files are missing, in generation batches (the same in every process)."""
    missing = [(r, name) for r, name in pairs if not (folder / name).exists()]
    return [missing[start : start + batch_size] for start in range(0, len(missing), batch_size)]


def generate_share(ctx: RunContext, j: int) -> None:
    """This rank's share of the evaluation after task ``j``: the missing images' batches, dealt round-robin
    over the ranks, sampled and written. Batches are those one process would make, so every image is too."""
    batches = [(folder, batch) for pairs, folder in evaluation_images(ctx, j)
               for batch in missing_batches(pairs, folder, ctx.settings.batch_size)]
    mine = ctx.ranks.share(batches)
    for folder in {f for f, _ in mine}:
        write_batches(ctx, [b for f, b in mine if f == folder], folder, f"generate share {ctx.ranks.index}@{j}")


def generate_cached(ctx: RunContext, pairs, folder: Path, desc: str) -> list:
    """The images of ``pairs`` (request, file name): generated for the files missing in ``folder``, then read."""
    batches = missing_batches(pairs, folder, ctx.settings.batch_size)
    if batches and ctx.method is None:
        raise ConfigError(f"{folder} lacks {sum(map(len, batches))} of the run's images (first: {batches[0][0][1]}); "
                          "rescoring reads the images a run saved and generates none. Re-run the method instead.")
    generated = write_batches(ctx, batches, folder, desc)
    return [generated[name] if name in generated else load_rgb(folder / name) for _, name in pairs]


def write_batches(ctx: RunContext, batches: list[list], folder: Path, desc: str) -> dict[str, Any]:
    """Generate each batch of (request, file name) and write its PNGs; returns file name -> image."""
    from concurrent.futures import ThreadPoolExecutor

    generated: dict[str, Any] = {}
    # one writer thread: PNG encoding (zlib releases the GIL) overlaps the sampling of the next batch
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-writer") as writer:
        writes = []
        for chunk in progress(batches, desc=desc, leave=False):
            images = ctx.generate([r for r, _ in chunk])
            if len(images) != len(chunk):
                raise RuntimeError(f"method {ctx.config.method!r} returned {len(images)} images for {len(chunk)} "
                                   "requests")
            for (_, name), image in zip(chunk, images, strict=True):
                generated[name] = image.convert("RGB")  # what the PNG decodes to (lossless): no re-reading
                writes.append(writer.submit(save_atomic, generated[name], folder / name))
        for write in writes:
            write.result()  # a failed write (a full disk) surfaces here, before any score is computed
    return generated
