"""The figures of a run's report, each a PNG: the accuracy matrix as a heat-map, forgetting curves, sample grids,
multi-concept samples with their boxes marked present or missing, the tracks' inputs and outputs, and timings."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifc_bench.core.results import RESULT_FILE, read_result

SAMPLE_ROWS = 3  # prompts per concept in a sample grid


TRACK_PAIRS = 3  # input/output pairs per concept in a track's figure


MULTI_COLUMNS = 6  # multi-concept images shown per prompt


@dataclass(frozen=True)
class ReportRun:
    path: Path
    result: dict[str, Any]
    label: str

    @property
    def concepts(self) -> list[str]:
        return self.result["concepts"]

    @property
    def done(self) -> int:
        return len(self.result["tasks"])


def load_runs(run_dirs: list[Path]) -> list[ReportRun]:
    """Read each run's result; labels say method, seed and folder, so side-by-side columns are unambiguous."""
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not (d / RESULT_FILE).exists():
            raise FileNotFoundError(f"{d} has no {RESULT_FILE}; give run directories written by 'cifc-bench run'")
        result = read_result(d)
        info = result["run_info"]
        args = info.get("method_args") or {}
        label = info["method"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(args.items()))})" if args else "")
        runs.append(ReportRun(d, result, f"{label} · seed {info['seed']} · {d.name}"))
    return runs


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def metric_matrix(rows) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def heatmap(R: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path,
            limits: tuple[float, float] | None = None) -> None:
    """A T×N after-each-task matrix, values ×100 written in the cells; unmeasured cells stay blank."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(0.55 * len(cols) + 2.4, 0.45 * len(rows) + 1.6))
    shown = np.ma.masked_invalid(R * 100)
    im = ax.imshow(shown, cmap="viridis", aspect="auto", vmin=limits and limits[0], vmax=limits and limits[1])
    for j in range(R.shape[0]):
        for i in range(R.shape[1]):
            if not math.isnan(R[j, i]):
                ax.text(i, j, f"{100 * R[j, i]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if shown[j, i] < shown.mean() else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("evaluated")
    ax.set_ylabel("model after task")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def forgetting_curves(R: np.ndarray, concepts: list[str], title: str, path: Path) -> None:
    """One line per concept: its score after each task from the task that taught it on."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(concepts):
        xs = [j + 1 for j in range(R.shape[0]) if not math.isnan(R[j, i])]
        ys = [100 * R[j, i] for j in range(R.shape[0]) if not math.isnan(R[j, i])]
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=cmap(i % 10), label=name)
    ax.set_xlabel("model after task")
    ax.set_ylabel(title + " ×100")
    ax.set_xticks(range(1, R.shape[0] + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    ax.set_title(f"{title}: each concept from the task that taught it", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(run: ReportRun, i: int, path: Path) -> bool:
    """Rows: the concept's first prompts (first seed); columns: the model after each task from task i on."""
    from cifc_bench.core.images import load_rgb

    name = run.concepts[i]
    states = [j for j in range(i, run.done) if (run.path / "images" / f"after_task_{j:02d}" / name).is_dir()]
    files = sorted((run.path / "images" / f"after_task_{states[-1]:02d}" / name).glob("p*_s000.png"))[:SAMPLE_ROWS] \
        if states else []
    if not files:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(files), len(states), figsize=(1.1 * len(states) + 0.6, 1.15 * len(files) + 0.4),
                             squeeze=False)
    for r, f in enumerate(files):
        for c, j in enumerate(states):
            ax = axes[r][c]
            p = run.path / "images" / f"after_task_{j:02d}" / name / f.name
            if p.exists():
                ax.imshow(np.asarray(load_rgb(p)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"after {j + 1}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f.stem.split("_")[0], fontsize=7)
    fig.suptitle(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def multi_samples(run: ReportRun, j: int, path: Path) -> bool:
    """Multi-concept images of model state j with each concept's box: green when present, red when missing."""
    from matplotlib.patches import Rectangle

    from cifc_bench.core.images import load_rgb

    folder = run.path / "images" / f"after_task_{j:02d}" / "_multi"
    if not (folder / "scores.json").exists():
        return False
    scores = json.loads((folder / "scores.json").read_text())
    prompts = run.result["neglect"]["prompts"]
    by_prompt: dict[int, list] = {}
    for s in scores["images"]:
        by_prompt.setdefault(s["prompt"], []).append(s)
    plt = _plt()
    n_rows, n_cols = len(by_prompt), min(MULTI_COLUMNS, max(len(v) for v in by_prompt.values()))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols + 0.4, 1.9 * n_rows + 0.3), squeeze=False)
    for r, (q, items) in enumerate(sorted(by_prompt.items())):
        boxes = prompts[q]["boxes"]
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(items):
                ax.axis("off")
                continue
            s = items[c]
            img = np.asarray(load_rgb(folder / s["file"]))
            h, w = img.shape[:2]
            ax.imshow(img, interpolation="nearest")
            marks = []
            for k, concept in enumerate(s["concepts"]):
                ok = s["present"][k]
                colour = "#1a9850" if ok else "#d73027"
                if boxes:
                    y0, x0, y1, x1 = boxes[k]
                    ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                                           lw=1.5, ec=colour))
                marks.append(f"{concept} {'✓' if ok else '✗'}")
            ax.set_xlabel("  ".join(marks), fontsize=6)
        axes[r][0].set_ylabel(f"prompt {q}", fontsize=7)
    fig.suptitle(f"multi-concept samples after task {j + 1} (green: present, red: missing)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def track_samples(run: ReportRun, track: str, j: int, path: Path) -> bool:
    """A track's inputs and outputs of model state j: a row per target concept, input and output side by side
    for its first inputs, the edit box outlined on the output."""
    from matplotlib.patches import Rectangle

    from cifc_bench.core.images import load_rgb

    part = (run.result.get("tracks") or {}).get(track)
    folder = run.path / "images" / f"after_task_{j:02d}" / f"_{track}"
    concepts = [c for c in (part or {}).get("concepts", []) if (folder / c).is_dir()]
    if not concepts:
        return False
    n_pairs = min(TRACK_PAIRS, max(len(list((folder / c).glob("k*.png"))) for c in concepts))
    plt = _plt()
    fig, axes = plt.subplots(len(concepts), 2 * n_pairs, figsize=(1.1 * 2 * n_pairs + 0.6, 1.2 * len(concepts) + 0.5),
                             squeeze=False)
    for r, concept in enumerate(concepts):
        for k in range(n_pairs):
            for c, kind in enumerate(("input", "output")):
                ax = axes[r][2 * k + c]
                ax.set_xticks([])
                ax.set_yticks([])
                base = run.path / "images" / "_track_inputs" / track / concept if kind == "input" else folder / concept
                image = base / f"k{k:03d}.png"
                if not image.exists():
                    ax.axis("off")
                    continue
                img = np.asarray(load_rgb(image))
                ax.imshow(img, interpolation="nearest")
                if kind == "output" and part.get("box"):
                    h, w = img.shape[:2]
                    y0, x0, y1, x1 = part["box"]
                    ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                                           lw=1.2, ec="#fdae61"))
                if r == 0:
                    ax.set_title(f"{kind} {k}", fontsize=7)
        axes[r][0].set_ylabel(concept, fontsize=7)
    fig.suptitle(f"{track} after task {j + 1}: {part.get('prompt', '')} (strength {part.get('strength')})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def retention_plot(run: ReportRun, path: Path) -> bool:
    """Each retention metric after each evaluated task (drift on its own axis, the others on a second one);
    False when the run measured no retention."""
    part = run.result.get("retention")
    if not part:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    others = ax.twinx()
    for name, row in part["rows"].items():
        xs = [j + 1 for j, v in enumerate(row) if v is not None]
        ys = [100 * v for v in row if v is not None]
        (ax if name == "drift" else others).plot(xs, ys, marker="o", ms=3, label=name,
                                                  color="#d73027" if name == "drift" else None)
    ax.set_xlabel("task")
    ax.set_ylabel("drift ×100 (lower is better)")
    others.set_ylabel("generic prompts' scores ×100")
    fig.legend(fontsize=7, loc="upper center", ncol=4)
    ax.set_title("retention of the base model", fontsize=9, pad=18)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def timings_plot(run: ReportRun, path: Path) -> None:
    plt = _plt()
    tasks = run.result["tasks"]
    train = [t.get("train_seconds") or 0.0 for t in tasks]
    evals = [t.get("eval_seconds") or 0.0 for t in tasks]
    xs = np.arange(1, len(tasks) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    ax.bar(xs, train, label="train", color="#4575b4")
    ax.bar(xs, evals, bottom=train, label="evaluate", color="#fdae61")
    ax.set_xlabel("task")
    ax.set_ylabel("seconds")
    ax.set_xticks(xs)
    ax.legend(fontsize=7)
    ax.set_title("wall time per task", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# The page
