"""Pretraining of the synthetic tier's base model and scorer (``cifc-bench synth pretrain``).

Both are trained from a seed on scenes drawn on the fly from :mod:`cifc_bench.synth.world`; no personal
identity, personal style or held-out combination is ever shown. The base model is an SD-1.x-shaped
text-to-image model in pixel space (diffusers ``UNet2DConditionModel`` + transformers ``CLIPTextModel`` with the
real CLIP tokenizer); the scorer is an open_clip ``CLIP`` with separate weights, as CLIP ViT-B/32 is separate
from SD-1.5's text encoder. Thread count and step counts are fixed, so the same seed gives the same weights
on the same kind of machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cifc_bench.core.progress import progress
from cifc_bench.synth import world
from cifc_bench.synth.pretrain_data import TEXT_LENGTH, PretrainConfig
from cifc_bench.synth.pretrain_models import (
    SAMPLER,
    SCORER_CFG,
    SCORER_GRAIN,
    UNetTrainer,
    build_base_model,
    pretrain_scorer,
    pretrain_text_encoder,
)

STATE_DIR = "pretrain-state"


LOG = "chunks.json"


EXPORTED = ("base", "scorer.safetensors")


class PretrainError(ValueError):
    """A pretraining request that would lose or mix up finished work."""


def chunk_ranges(cfg: PretrainConfig) -> list[tuple[int, int]]:
    """UNet step ranges of chunks 1..n."""
    return [(a, min(a + cfg.chunk_steps, cfg.unet_steps)) for a in range(0, cfg.unet_steps, cfg.chunk_steps)]


def _first_chunk(cfg: PretrainConfig, state_dir: Path) -> dict:
    """Chunk 0: the scorer, then the text encoder, saved in fp16 (the UNet is trained on exactly the encoder
    that is shipped)."""
    started = time.perf_counter()
    scorer_report = pretrain_scorer(cfg, state_dir / "scorer.safetensors")
    scorer_seconds = time.perf_counter() - started
    tokenizer, text_encoder, _, _ = build_base_model(cfg.seed)
    text_report = pretrain_text_encoder(cfg, tokenizer, text_encoder)
    text_encoder.half().save_pretrained(state_dir / "text_encoder")
    from cifc_bench.core.data import sha256_file

    digest = hashlib.sha256()
    for f in (state_dir / "scorer.safetensors", state_dir / "text_encoder" / "model.safetensors"):
        digest.update(sha256_file(f).encode())
    return {"index": 0, "trains": ["scorer", "text_encoder"], "sha256": digest.hexdigest(),
            "seconds": time.perf_counter() - started, "scorer": {**scorer_report, "seconds": scorer_seconds},
            "text_encoder": {**text_report, "seconds": time.perf_counter() - started - scorer_seconds}}


def _tokenizer():
    """The real CLIP tokenizer, limited to the world's caption length. Built afresh for the export: a fast
    tokenizer that has been called saves its last padding and truncation settings into tokenizer.json."""
    from cifc_bench.diffusion.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    tokenizer.model_max_length = TEXT_LENGTH
    return tokenizer


def _frozen_text_encoder(state_dir: Path):
    from transformers import CLIPTextModel

    tokenizer = _tokenizer()
    text_encoder = CLIPTextModel.from_pretrained(state_dir / "text_encoder", torch_dtype=torch.float32)
    return tokenizer, text_encoder.requires_grad_(False).eval()


def _unet_trainer(cfg: PretrainConfig, state_dir: Path) -> UNetTrainer:
    from cifc_bench.synth import training_state

    trainer = UNetTrainer(cfg, *_frozen_text_encoder(state_dir))
    saved = training_state.load(state_dir, "unet")
    if saved is not None:
        trainer.load(*saved)
    return trainer


def _unet_chunk(cfg: PretrainConfig, state_dir: Path, index: int, trainer: UNetTrainer,
                deadline: float | None = None) -> dict | None:
    """Train the UNet through chunk ``index``'s step range, saving the whole state every ``save_every``
    steps (a kill loses at most that much) and at the end. Past ``deadline`` (``time.monotonic()``) it saves
    and returns None: the chunk continues on ``--resume``."""
    from cifc_bench.core.atomic import fault_point
    from cifc_bench.synth import training_state

    first, last = chunk_ranges(cfg)[index - 1]
    if not first <= trainer.step <= last:
        raise PretrainError(f"the saved UNet state is at step {trainer.step}, outside chunk {index} "
                            f"(steps {first}-{last}): {state_dir} is not this pretraining's state")
    if trainer.step == first:
        trainer.seconds = 0.0
    bar = progress(total=last - first, initial=trainer.step - first,
                   desc=f"pretrain base model, chunk {index}/{len(chunk_ranges(cfg))} (steps {first}-{last})")
    digest = None
    while trainer.step < last:
        started = time.perf_counter()
        trainer.train_step()
        trainer.seconds += time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(trainer.losses[-50:]):.4f}")
        fault_point("pretrain-step")
        if trainer.step % cfg.save_every == 0 or trainer.step == last:
            digest = training_state.save(state_dir, "unet", *trainer.state())
        elif deadline is not None and time.monotonic() > deadline:
            training_state.save(state_dir, "unet", *trainer.state())
            bar.close()
            return None
    bar.close()
    if digest is None:  # the state was saved at the end of this chunk before a kill
        digest = training_state.tensor_digest(trainer.state()[0])
    return {"index": index, "trains": ["unet"], "unet_steps": [first, last], "sha256": digest,
            "seconds": trainer.seconds, "mean_loss": float(np.mean(trainer.losses[first:last]))}


def _export(cfg: PretrainConfig, out_dir: Path, state_dir: Path, trainer: UNetTrainer, log: dict) -> dict:
    """Write the shipped files (EMA UNet in fp16, the fp16 text encoder, the scorer) and the manifest."""
    import shutil

    from diffusers import DDIMScheduler

    from cifc_bench.core.data import sha256_file
    from cifc_bench.diffusion.models import save_bundle_folder

    out_dir.mkdir(parents=True, exist_ok=True)
    save_bundle_folder(out_dir / "base", _tokenizer(), trainer.text_encoder.half(), trainer.ema_unet().half(),
                       DDIMScheduler(**SAMPLER))
    trainer.text_encoder.float()
    shutil.copyfile(state_dir / "scorer.safetensors", out_dir / "scorer.safetensors.tmp")
    (out_dir / "scorer.safetensors.tmp").replace(out_dir / "scorer.safetensors")
    (out_dir / "scorer.pt").unlink(missing_ok=True)  # the v1 world's pickled scorer
    files = sorted(p for name in EXPORTED for p in ([out_dir / name] if (out_dir / name).is_file()
                                                     else (out_dir / name).rglob("*")) if p.is_file())
    manifest = {
        "world": world.VERSION, "config": log["config"], "complete": len(log["chunks"]) == 1 + len(chunk_ranges(cfg)),
        "chunks_done": len(log["chunks"]), "chunks_total": 1 + len(chunk_ranges(cfg)), "chunks": log["chunks"],
        "seconds": sum(c["seconds"] for c in log["chunks"]), "scorer_architecture": SCORER_CFG, "grain": SCORER_GRAIN,
        "files": {str(p.relative_to(out_dir)): sha256_file(p) for p in files},
    }
    manifest["total_bytes"] = sum((out_dir / f).stat().st_size for f in manifest["files"])
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / "manifest.json")
    return manifest


def _exported_chunks(out_dir: Path) -> int:
    """How many chunks the shipped files in ``out_dir`` come from (-1: none exported by this recipe's driver)."""
    manifest = out_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("chunks_done", -1) if manifest.exists() else -1


def pretrain(cfg: PretrainConfig, out_dir: Path, state_dir: Path | None = None, resume: bool = False,
             max_chunks: int | None = None, max_seconds: float | None = None) -> dict:
    """Run the chunks of the recipe ``cfg`` that are not done yet (at most ``max_chunks`` of them, and for
    about ``max_seconds``: then the UNet state is saved mid-chunk and ``"paused"`` is set in the returned
    log), exporting the shipped files into ``out_dir`` after each UNet chunk; returns the chunk log.

    A pretraining already under way in ``state_dir`` (default ``out_dir/pretrain-state``) continues only with
    ``resume=True`` and the same recipe, so that finished chunks are never overwritten by mistake. Killed and
    resumed, or run in chunks across sessions, it ends with the same files as one uninterrupted run.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, out_dir, state_dir, resume, max_chunks, max_seconds)
    finally:  # the caller's thread count again: a test suite or a run after it must not inherit the recipe's
        torch.set_num_threads(threads)


def _pretrain(cfg: PretrainConfig, out_dir: Path, state_dir: Path | None, resume: bool, max_chunks: int | None,
              max_seconds: float | None) -> dict:
    from cifc_bench.core.atomic import fault_point

    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir / STATE_DIR
    log_path = state_dir / LOG
    if log_path.exists():
        log = json.loads(log_path.read_text())
        if not resume:
            raise PretrainError(f"{state_dir} holds a pretraining with {len(log['chunks'])} finished chunk(s): pass "
                                f"--resume to continue it, or delete {state_dir} to start again")
        changed = {k: (v, log["config"].get(k)) for k, v in asdict(cfg).items() if log["config"].get(k) != v}
        if changed:
            raise PretrainError(f"the pretraining in {state_dir} used another recipe; changed (new, saved): {changed}. "
                                f"Resume with the saved recipe, or delete {state_dir} to start again")
    else:
        log = {"config": asdict(cfg), "world": world.VERSION, "chunks": []}
    total, ran, trainer = 1 + len(chunk_ranges(cfg)), 0, None
    if len(log["chunks"]) >= 2 and _exported_chunks(out_dir) != len(log["chunks"]):
        # killed after a chunk was logged but before its files were exported: the state is that chunk's end
        trainer = _unet_trainer(cfg, state_dir)
        if trainer.step == chunk_ranges(cfg)[len(log["chunks"]) - 2][1]:
            _export(cfg, out_dir, state_dir, trainer, log)
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    while len(log["chunks"]) < total and (max_chunks is None or ran < max_chunks):
        index = len(log["chunks"])
        if index == 0:
            state_dir.mkdir(parents=True, exist_ok=True)
            entry = _first_chunk(cfg, state_dir)
        else:
            trainer = trainer or _unet_trainer(cfg, state_dir)
            entry = _unet_chunk(cfg, state_dir, index, trainer, deadline)
            if entry is None:
                return {**log, "paused": {"chunk": index, "unet_step": trainer.step}}
        log["chunks"].append(entry)
        tmp = log_path.with_name(LOG + ".tmp")
        tmp.write_text(json.dumps(log, indent=1))
        tmp.replace(log_path)
        if index > 0:
            fault_point("pretrain-export")
            _export(cfg, out_dir, state_dir, trainer, log)
        ran += 1
    return log
