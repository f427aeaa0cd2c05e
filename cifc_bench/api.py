"""The public contract between the harness and method plugins.

A protocol becomes a :class:`TaskSequence` of :class:`Task` objects; a plugin subclasses :class:`Method`.
The harness owns the continual loop and every evaluation, so a method only learns and generates::

    class MyMethod(Method):
        def learn_task(self, task, budget): ...
        def generate(self, requests, settings): ...

Everything here is a frozen dataclass so that runs can be hashed, logged and compared.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cifc_bench.core.bundle import ModelBundle  # noqa: F401  (part of the method contract: re-exported)

if TYPE_CHECKING:  # keep `cifc-bench ls` free of torch and PIL imports
    import torch
    from PIL import Image

TOKEN_MARK = "<TOK>"


class DivergenceError(RuntimeError):
    """Training or sampling produced non-finite numbers or degenerate images: the run has failed and has no
    score. The message names the task, the step and the likely cause."""


@dataclass(frozen=True)
class Box:
    """A region in normalised image coordinates (y0, x0, y1, x1), the CIDM/Mix-of-Show convention."""

    y0: float
    x0: float
    y1: float
    x1: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.y0 < self.y1 <= 1.0 and 0.0 <= self.x0 < self.x1 <= 1.0):
            raise ValueError(
                f"box {self.as_tuple()} is not a normalised (y0, x0, y1, x1) box with 0 <= y0 < y1 <= 1 "
                "and 0 <= x0 < x1 <= 1; give fractions of the image size"
            )

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.y0, self.x0, self.y1, self.x1)

    def pixels(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) bounds on a ``height`` × ``width`` grid, rounded outwards, at least one
        cell wide and high: the suite's one rounding of a box (crops, presence regions, edit masks)."""
        left, top = math.floor(self.x0 * width), math.floor(self.y0 * height)
        right, bottom = max(math.ceil(self.x1 * width), left + 1), max(math.ceil(self.y1 * height), top + 1)
        return top, left, min(bottom, height), min(right, width)


@dataclass(frozen=True, eq=False)
class ImageInit:
    """An input image a request starts from, for the image-conditioned uses of a learned model.

    - ``strength`` in (0, 1] (SDEdit style transfer): how far the input is noised before the method denoises it
      with its prompt; near 0 returns the input, 1 starts from pure noise (diffusers' img2img rule).
    - ``box`` (blended editing): only this region may change; outside it every pixel is the input's.
    The shared sampler (``cifc_bench.diffusion.sampling``) implements both for every method that samples through it.
    """

    image: Any  # a PIL image; resized to the sampling resolution
    strength: float = 1.0
    box: Box | None = None

    def __post_init__(self) -> None:
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < s <= 1.0:
            raise ValueError(f"strength {s!r} is outside (0, 1]: give the fraction of the sampler's steps to redo "
                             "(e.g. 0.6 for style transfer; 1 with a box for editing)")


@dataclass(frozen=True)
class Concept:
    """One personal concept: its placeholder tokens, its data and how it is evaluated."""

    name: str
    placeholders: tuple[str, ...]
    initializers: tuple[str | float, ...]  # a word, or the std-dev of a random init, one per placeholder
    class_word: str
    kind: str  # "object" or "style"
    image_dir: Path
    caption_dir: Path | None
    prompt_set: str
    eval_replacement: str  # replaces <TOK> in evaluation prompts, e.g. "yellow rubber <duck1> <duck2>"
    eval_prompts: tuple[str, ...]  # already expanded with eval_replacement
    caption_phrase: str = ""  # the class phrase that captions use, replaced by the placeholders in training
    #: the protocol's ``generator`` field, opaque to the core: what a procedural tier rendered (its exact checks read it)
    generator: Any = field(default=None, compare=False)

    @property
    def token_string(self) -> str:
        return " ".join(self.placeholders)

    def to_class_words(self, text: str) -> str:
        """The prompt as the scorer reads it: placeholders replaced by the class word (CIDM TA rule)."""
        return " ".join(text.replace(self.token_string, self.class_word).split())

    def image_paths(self) -> tuple[Path, ...]:
        from cifc_bench.core.images import list_images

        return list_images(self.image_dir)


@dataclass(frozen=True)
class Task:
    """One step of the continual stream. CIFC has one concept per task; the type allows more."""

    index: int
    concepts: tuple[Concept, ...]

    @property
    def name(self) -> str:
        return "+".join(c.name for c in self.concepts)


@dataclass(frozen=True)
class MultiConceptPrompt:
    """A prompt that asks for several learned concepts at once, optionally with one region per concept."""

    prompt: str
    concepts: tuple[str, ...]
    boxes: tuple[Box, ...] | None = None
    #: one prompt per box, the global prompt's clause for that concept with its context (its scene; on synth10
    #: its position and background), for methods that condition each region on its own prompt; None: the
    #: request's default, "a <the concept's evaluation phrase>"
    region_prompts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Track:
    """An image-conditioned use of the learned concepts, measured like the per-concept metrics (a protocol's
    ``tracks``). After a task, every learned concept of kind ``kind`` redraws ``inputs_per_concept`` input
    images: ``prompt`` (``<TOK>``: the concept's evaluation phrase; ``{input}``: the class word of what the
    input shows) from the input noised to ``strength``, and with ``box`` only inside it. Custom style transfer
    is a style track without a box (SDEdit); custom image editing an object track with one (blended latents).
    ``inputs`` lists (concept, image path) candidates in order; a concept never gets its own images."""

    name: str
    kind: str
    prompt: str
    strength: float
    inputs: tuple[tuple[str, Path], ...]
    inputs_per_concept: int
    metrics: tuple[str, ...]
    box: Box | None = None
    description: str = ""

    def targets(self, concepts: Sequence[Concept]) -> tuple[Concept, ...]:
        """The concepts among ``concepts`` that this track applies to."""
        return tuple(c for c in concepts if c.kind == self.kind)

    def cases(self, concept: Concept, class_words: Mapping[str, str]) -> list[tuple[str, Path, str]]:
        """(input concept, input path, prompt) of each of ``concept``'s inputs; ``class_words`` maps every
        concept name to its class word."""
        chosen = [(name, path) for name, path in self.inputs if name != concept.name][: self.inputs_per_concept]
        return [(name, path, self.prompt.replace(TOKEN_MARK, concept.eval_replacement).replace(
            "{input}", class_words[name])) for name, path in chosen]


@dataclass(frozen=True)
class TaskSequence:
    """What a protocol YAML file describes: an ordered, validated task stream."""

    name: str
    version: str
    tasks: tuple[Task, ...]
    multi_concept_prompts: tuple[MultiConceptPrompt, ...] = ()
    default_model: str | None = None
    default_scorer: str | None = None
    source: Path | None = None
    reference_results: Mapping[str, Any] = field(default_factory=dict)
    tracks: tuple[Track, ...] = ()
    #: retention of the base model: generic prompts (no learned token), images per prompt, metrics beside drift
    retention_prompts: tuple[str, ...] = ()
    retention_images: int = 0
    retention_metrics: tuple[str, ...] = ()

    def track(self, name: str) -> Track:
        for t in self.tracks:
            if t.name == name:
                return t
        raise KeyError(f"protocol {self.name!r} has no track {name!r}; it has {[t.name for t in self.tracks]}")

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return tuple(c for t in self.tasks for c in t.concepts)

    def concept(self, name: str) -> Concept:
        for c in self.concepts:
            if c.name == name:
                return c
        raise KeyError(f"protocol {self.name!r} has no concept {name!r}; it has {[c.name for c in self.concepts]}")


@dataclass(frozen=True)
class GenerationRequest:
    """One image to generate. The seed is fixed by the harness and is the same for every method."""

    prompt: str
    seed: int
    concepts: tuple[Concept, ...] = ()
    boxes: tuple[Box, ...] | None = None
    #: one text per box for methods that condition each region on its own prompt (CIDM's region synthesis,
    #: Mix-of-Show's regional sampler); None: "a <the concept's evaluation phrase>"
    region_prompts: tuple[str, ...] | None = None
    #: an input image to redraw (style transfer) or edit inside a box; None: text-to-image
    init: ImageInit | None = None

    def region_prompt(self, k: int) -> str:
        """The prompt of box ``k``: the user's, or the concept's evaluation phrase."""
        if self.region_prompts is not None:
            return self.region_prompts[k]
        return f"a {self.concepts[k].eval_replacement}"


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings the harness imposes on every method, so their images are comparable (from
    :meth:`cifc_bench.core.config.RunSpec.generation`; a method that samples for itself, e.g. to capture features,
    gives every field)."""

    resolution: int
    num_inference_steps: int
    guidance_scale: float
    batch_size: int
    negative_prompt: str = ""


@dataclass(frozen=True)
class ConceptImages:
    """What a per-concept metric sees: one concept's generated images for one model state, with the features
    the harness computed once for all metrics. A metric is a pure function ``(ConceptImages) -> float``
    registered in the entry-point group ``cifc_bench.metrics`` and named in a protocol's ``defaults.metrics``.

    Features are L2-normalised rows (numpy arrays): ``features`` of the images and ``reference_features`` of the
    concept's training images under the run's scorer, ``text_features`` of ``prompts`` (the evaluation prompts
    as the scorer reads them: placeholders replaced by the class word), the DINO features when the run
    measures ``ia_dino`` (else None), and under ``encoded`` / ``encoded_references`` the features of each
    ``--image-encoders`` encoder, by the metric it gives (``ia_dinov2``: ...).
    """

    concept: Concept
    images: tuple[Any, ...]  # PIL images, one per evaluation request, in request order
    prompts: tuple[str, ...]
    features: Any
    reference_features: Any
    text_features: Any
    dino_features: Any = None
    dino_reference_features: Any = None
    encoded: Mapping[str, Any] = field(default_factory=dict)  # metric -> the images' features under its encoder
    encoded_references: Mapping[str, Any] = field(default_factory=dict)  # metric -> the training images' features

    #: the fields with a row per image: :meth:`image` slices them
    PER_IMAGE: ClassVar[tuple[str, ...]] = ("images", "prompts", "features", "text_features", "dino_features")

    def image(self, k: int):
        """The sample of image ``k`` alone, for per-image scores (the leaderboard's interval units)."""
        rows = slice(k, k + 1)
        return dataclasses.replace(self, **{name: getattr(self, name)[rows] for name in self.PER_IMAGE
                                            if getattr(self, name) is not None},
                                   encoded={m: f[rows] for m, f in self.encoded.items()})


@dataclass(frozen=True)
class TrackImages(ConceptImages):
    """What a track metric sees: one concept's outputs of one track for one model state. Beside the fields of
    :class:`ConceptImages` (so ``ia``, ``ta`` and exact per-concept metrics apply as they are): the ``inputs``
    (PIL, at the output size), their scorer ``input_features``, the edit ``box`` and ``box_features``, the
    outputs' features with everything outside the box painted over (:func:`cifc_bench.evaluation.neglect.isolate_box`)."""

    track: str = ""
    inputs: tuple[Any, ...] = ()
    input_features: Any = None
    box: Box | None = None
    box_features: Any = None

    PER_IMAGE: ClassVar[tuple[str, ...]] = (*ConceptImages.PER_IMAGE, "inputs", "input_features", "box_features")


@dataclass(frozen=True)
class TrainBudget:
    """The fixed budget of one task, from :meth:`cifc_bench.core.config.RunSpec.budget`; it never depends on the GPU
    count. ``seed`` seeds everything random in the task's training (the harness also seeds torch with it).

    ``steps`` and ``lr_scale`` may differ per task when the run uses one of the protocol's named schedules (the
    CIDM release trains every cifc10 task for its own number of steps, and its style tasks 6 and 8 at 1.5× the
    LoRA learning rate); a method multiplies its adapter learning rates, not its token rates, by ``lr_scale``.
    """

    steps: int
    batch_size: int
    resolution: int
    seed: int = 0
    lr_scale: float = 1.0


class Method(abc.ABC):
    """Base class of every method plugin.

    Subclasses implement :meth:`learn_task` and :meth:`generate`. State for resume goes through
    :meth:`state_dict` / :meth:`load_state_dict` (tensors only, saved as safetensors by the harness), and
    :meth:`stored_parameters` tells the leaderboard what the method keeps per task.
    """

    #: What the method keeps between tasks, for the leaderboard's storage column
    #: ("none", "single-model", "per-task-adapters", "per-task-features", ...). A method whose variants store
    #: different things may set it per instance. Replay of old data is never allowed.
    storage: str = "single-model"

    #: True for a reference that breaks the benchmark's rules on purpose (``replay`` trains on earlier tasks'
    #: data): leaderboards show it apart and never rank it
    reference: bool = False

    #: True for a method whose images cannot depend on the run seed (it learns nothing and draws nothing at
    #: random: ``base``). A sweep runs it for its first seed only, since its other seeds' runs are the same run.
    seed_invariant: bool = False

    #: The model families the method runs on: ``sd1`` (SD-1.x, the synthetic tier) and ``sdxl``; the harness
    #: refuses the others at start with a clear error.
    families: tuple[str, ...] = ("sd1",)

    #: The version of the method's implementation, recorded in every run. Bump it whenever a change alters the
    #: numbers the method produces: the leaderboard never mixes runs of two versions of one method.
    version: int = 1

    #: What the method's paper reports for an argument's change, for the leaderboard's effects tables:
    #: {(argument, value): (metric, summary, change, source)}, e.g. an ablation's change of final ``ia``.
    paper_effects: dict[tuple[str, Any], tuple[str, str, float, str]] = {}

    @classmethod
    def unet_passes_per_step(cls, request: GenerationRequest, guided: bool, tasks_learned: int,
                             method_args: Mapping[str, Any]) -> int:
        """UNet evaluations per image and sampler step for ``request`` after ``tasks_learned`` tasks, with
        the method's arguments: what ``--dry-run`` counts. The shared sampler's are 2 with guidance, 1
        without; a method with its own sampler (region synthesis, a per-adapter composite) says its own."""
        return 2 if guided else 1

    @classmethod
    def optimisation_steps(cls, budget_steps: Sequence[int], method_args: Mapping[str, Any]) -> tuple[int, ...]:
        """The optimisation steps the method takes at each task, given each task's budget: what ``--dry-run``
        counts and the progress line's time left divides by. A method trains its budget; one that trains beyond
        it on purpose (the ``replay`` reference) says how far."""
        return tuple(budget_steps)

    def __init__(self, bundle: ModelBundle, **hparams: Any) -> None:
        self.bundle = bundle
        self.hparams = dict(hparams)

    @abc.abstractmethod
    def learn_task(self, task: Task, budget: TrainBudget) -> None:
        """Learn ``task`` from its concepts' images within ``budget.steps`` optimisation steps."""

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> list[Image.Image]:
        """Return one image per request, using everything learned so far."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue after the last learned task (tensors only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor], tasks_done: Sequence[Task]) -> None:  # noqa: B027
        """Restore the state saved after ``tasks_done``; the default keeps nothing but the task list."""

    def trainable_parameters(self) -> int:
        """How many parameters the last :meth:`learn_task` optimised."""
        return 0

    def stored_parameters(self) -> int:
        """How many parameters the method stores beyond the frozen base model, over all tasks so far."""
        return sum(int(t.numel()) for t in self.state_dict().values())
