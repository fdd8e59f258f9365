"""The cost model: a run's wall-clock predicted from the images it will process and the speed measured for its family.

A run's work is counted per pass, from its spec and its task's split sizes: training images (epochs × the images an
epoch trains on, `drop_last` honoured), no-grad images through the model (val after every epoch, the test pass),
no-grad images through the backbone before training (a frozen trunk's feature pass; the images a method's build
reads, such as SPT's prompt construction) and the method's probe calls (at init and after every epoch). Its speed is
seconds per image of each pass, measured by records of the results store and by `bench perf --calibrate`, for its
family: the method's kind (frozen trunk, prompts, adapters, full), the backbone and the device. A pass's seconds per
image scale with the tokens each image carries (the backbone's plus the method's extra tokens), so the runs of a
prompt-length sweep share one family.

The kind and the extra tokens are what the method's builder returns (`Adapted.trunk_frozen`, `extra_tokens`, the
learnable share of the backbone), read from a build on the small `micro-vit` backbone, never from method names.
Where no observation of a run's family exists (no record and no calibration of that kind, backbone and device), the
run has no basis and is counted as such, never guessed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from bench import BenchError
from bench.atomic import replacing
from bench.backbone import LoadedBackbones, backbone_entry
from bench.config import RunSpec, TrainConfig
from bench.data import TASKS, Preprocess, TensorSplit
from bench.engine import steps_in_epoch, trains_on_val
from bench.method import METHODS, BuildContext
from bench.protocol import Protocol
from bench.record import RunRecord

KINDS = ("frozen", "prompts", "adapters", "full")
PHASES = ("train", "val", "test", "setup", "probe")
CALIBRATION = "calibration.json"
# The backbone the builds that reveal a method's kind run on: small, seeded, offline.
SHAPE_BACKBONE = "micro-vit"
SHAPE_IMAGES = 64
# A feature pass that took less than this share of a no-grad pass over its images read stored features (a cache
# hit): it says nothing about the speed of a pass.
CACHE_HIT_SHARE = 0.5


@dataclass(frozen=True)
class Shape:
    """What a method does to a backbone, as far as its cost goes.

    Attributes:
        kind: `frozen` (the trunk learns nothing: features once, then only the head), `prompts` (extra tokens),
            `full` (every backbone parameter learns) or `adapters` (some do, or added modules).
        extra_tokens: tokens added to every image's sequence.
        probes: the method measures a probe batch at init and after every epoch.
    """

    kind: str
    extra_tokens: int
    probes: bool


class _Read(Exception):
    """Raised by `_CountingSplit` on the first read: the build's image count is known, the rest is not computed."""

    def __init__(self, images: int) -> None:
        self.images = images


@dataclass
class _CountingSplit:
    """A training split of `size` images that stops the build at its first read, reporting how many it asked for."""

    size: int

    def __len__(self) -> int:
        return self.size

    def image_batches(self, index: torch.Tensor, batch_size: int, generator: Any = None) -> Iterator[torch.Tensor]:
        raise _Read(len(index))

    def batches(self, batch_size: int, generator: Any = None, device: Any = None) -> Iterator[Any]:
        raise _Read(self.size)


def _hparams_key(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams, sort_keys=True, default=str)


# The optimisation settings every method shares shape no module: a build's shape depends only on the others.
_OPTIMISATION = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _structural(hparams: dict[str, Any]) -> str:
    return _hparams_key({k: v for k, v in hparams.items() if k not in _OPTIMISATION})


@functools.lru_cache(maxsize=None)
def _shape_backbones() -> LoadedBackbones:
    return LoadedBackbones(capacity=1)


def _context(split: Any, protocol: dict[str, Any]) -> BuildContext:
    backbone = _shape_backbones().get(SHAPE_BACKBONE)
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    return BuildContext(backbone, 2, split, preprocess, torch.Generator().manual_seed(0), torch.device("cpu"),
                        pipeline=Protocol.from_values(protocol))


@functools.lru_cache(maxsize=None)
def _shape(method: str, hparams: str, protocol: str) -> Shape:
    entry = METHODS.get(method)
    config = entry.config_cls.from_overrides(json.loads(hparams))
    ctx = _context(None, json.loads(protocol))
    size = ctx.backbone.input_size
    images = torch.randint(0, 256, (SHAPE_IMAGES, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    ctx = dataclasses.replace(ctx, train=TensorSplit(images, torch.arange(SHAPE_IMAGES) % 2))
    # The backbone's own weights, before the method adds any (peft injects its layers into the model).
    weights = list(ctx.backbone.model.parameters())
    adapted = entry.build(config, ctx)
    if adapted.trunk_frozen:
        kind = "frozen"
    elif adapted.extra_tokens > 0:
        kind = "prompts"
    else:
        kind = "full" if all(p.requires_grad for p in weights) else "adapters"
    return Shape(kind, adapted.extra_tokens, adapted.probe is not None)


def method_shape(spec: RunSpec) -> Shape:
    """The shape of `spec`'s method under its hyper-parameters (a build on `SHAPE_BACKBONE`, cached)."""
    return _shape(spec.method, _structural(spec.hparams), _hparams_key(spec.protocol))


@functools.lru_cache(maxsize=None)
def _build_reads(method: str, hparams: str, protocol: str, train_images: int) -> int:
    entry = METHODS.get(method)
    config = entry.config_cls.from_overrides(json.loads(hparams))
    try:
        entry.build(config, _context(_CountingSplit(train_images), json.loads(protocol)))
    except _Read as read:
        return read.images
    return 0


def build_reads(spec: RunSpec, train_images: int) -> int:
    """Training images `spec`'s build reads through the backbone before training (SPT's prompt construction: one
    draw per training image, or its `init_images`); the build stops at its first read, so nothing is computed."""
    return _build_reads(spec.method, _structural(spec.hparams), _hparams_key(spec.protocol), train_images)


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Work:
    """What one run processes: images per pass (`PHASES`; `probe` counts probe calls) and what sets their speed."""

    spec: RunSpec
    kind: str
    extra_tokens: int
    images: dict[str, int]

    @property
    def batch(self) -> int:
        return int(self.spec.hparams.get("batch_size", 0))

    @property
    def total_images(self) -> int:
        return sum(n for phase, n in self.images.items() if phase != "probe")


def work_of(spec: RunSpec, sizes: SplitSizes, pays_features: bool = True) -> Work:
    """The passes of `spec` over a task of `sizes`, as the engine runs them (`bench.engine.prepare`, `fit`).

    Args:
        pays_features: for a frozen trunk, whether this run extracts its features (the first run of a sweep that
            shares them) or reads them from the cache.
    """
    shape = method_shape(spec)
    config = METHODS.get(spec.method).config_cls.from_overrides(spec.hparams)
    pipeline = Protocol.from_values(spec.protocol)
    train = sizes.train + sizes.val if trains_on_val(spec.stage, pipeline) else sizes.train
    scores_val = spec.stage != "final"
    epochs = (config.epochs or TASKS.get(spec.task).epochs) + config.cooldown_epochs
    steps = steps_in_epoch(train, config.batch_size, pipeline.drop_last)
    images = {
        "train": epochs * min(train, steps * config.batch_size),
        "val": epochs * sizes.val if scores_val else 0,
        "test": sizes.test if spec.stage != "tune" else 0,
        "setup": 0,
        "probe": epochs + 1 if shape.probes else 0,
    }
    if shape.kind == "frozen":
        images["setup"] = (train + (sizes.val if scores_val else 0)) if pays_features else 0
    else:
        images["setup"] = build_reads(spec, train)
    return Work(spec, shape.kind, shape.extra_tokens, images)


def feature_group(spec: RunSpec) -> tuple[Any, ...]:
    """What a frozen trunk's features depend on (`bench.engine.prepare`'s cache key, less what one grid holds
    fixed): the runs of a group after the first read them from the cache."""
    hparams = {k: v for k, v in spec.hparams.items() if k in ("batch_size", "feature_norm")}
    return (spec.method, spec.task, spec.backbone, spec.weights,
            trains_on_val(spec.stage, Protocol.from_values(spec.protocol)), spec.stage == "final",
            _hparams_key(hparams), _hparams_key(spec.protocol))


def works(specs: Sequence[RunSpec], sizes: dict[str, SplitSizes]) -> list[Work]:
    """Each spec's work, the first run of each frozen-trunk feature group paying the feature pass."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for spec in specs:
        group = feature_group(spec)
        out.append(work_of(spec, sizes[spec.task], group not in seen))
        seen.add(group)
    return out


@dataclass(frozen=True)
class Observation:
    """Measured seconds per image of each pass of one run (per call for `probe`), and what set its speed.

    Attributes:
        source: `record <id>` or `calibration <file>`.
        extra_tokens: the run's extra tokens, to scale to another run's.
        commit: the code that ran it (`Provenance.git_commit`): the harness's own speed changes between versions.
    """

    method: str
    kind: str
    backbone: str
    device: str
    threads: int
    batch: int
    extra_tokens: int
    seconds: dict[str, float]
    source: str
    commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def observe(record: RunRecord, sizes: SplitSizes | None = None) -> Observation | None:
    """The speeds a finished record measured; None for a failed record, one without timings, or one of a method
    no longer registered. `sizes` defaults to the split sizes the record's task reported."""
    if not record.done or record.wallclock is None or record.provenance is None or record.spec.method not in METHODS:
        return None
    sizes = sizes or _recorded_sizes(record)
    if sizes is None:
        return None
    try:
        work = work_of(record.spec, sizes)
    except BenchError:
        return None
    clock, throughput = record.wallclock, record.throughput
    test_seconds = work.images["test"] / throughput.test_images_per_s \
        if work.images["test"] and throughput is not None and throughput.test_images_per_s else 0.0
    spent = {"train": clock.train, "val": clock.eval - test_seconds, "test": test_seconds,
             "setup": clock.feature_cache + clock.prompt_construction, "probe": clock.probe}
    seconds = {phase: spent[phase] / work.images[phase] for phase in PHASES
               if work.images[phase] > 0 and spent[phase] > 0}
    # Seconds per image of a no-grad pass over images (a frozen trunk's val pass reads features): a feature pass
    # faster than a share of it read a cache.
    nograd = seconds.get("test") if work.kind == "frozen" else seconds.get("test", seconds.get("val"))
    if "setup" in seconds and nograd is not None and seconds["setup"] < CACHE_HIT_SHARE * nograd:
        del seconds["setup"]
    if "train" not in seconds:
        return None
    return Observation(record.spec.method, work.kind, record.spec.backbone, record.provenance.device,
                       record.provenance.torch_threads, work.batch, work.extra_tokens, seconds,
                       f"record {record.id}", record.provenance.git_commit)


def _recorded_sizes(record: RunRecord) -> SplitSizes | None:
    reported = (record.task.data.get("split_sizes") if record.task is not None else None) or {}
    if all(isinstance(reported.get(k), int) for k in ("train", "val", "test")):
        return SplitSizes(reported["train"], reported["val"], reported["test"])
    return None


@dataclass(frozen=True)
class Prediction:
    """A run's predicted seconds, and the observations behind it; `seconds` is None when it has no basis."""

    work: Work
    seconds: float | None
    sources: tuple[str, ...] = ()
    why: str = ""


@dataclass
class CostModel:
    """Observations of one device; predicts runs on it.

    Attributes:
        device: the device name as records write it (`Provenance.device`).
        threads: torch threads a run will get (a CPU's speed depends on them; preferred, not required).
        commit: the code the runs will run (observations of the same code are preferred).
        base_tokens: per backbone, the tokens of an image before a method adds any (patches, class and registers).
    """

    observations: list[Observation]
    device: str
    threads: int
    base_tokens: dict[str, int]
    commit: str | None = None
    calibration: Path | None = None
    calibrated_on: str | None = None
    _by_family: dict[tuple[str, str], list[Observation]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for obs in self.observations:
            if obs.device == self.device:
                self._by_family.setdefault((obs.kind, obs.backbone), []).append(obs)

    def predict(self, work: Work) -> Prediction:
        spec = work.spec
        family = self._by_family.get((work.kind, spec.backbone), [])
        if not family:
            return Prediction(work, None, why=f"no {work.kind} run of {spec.backbone} measured on {self.device}")
        total, used = 0.0, set()
        for phase in PHASES:
            count = work.images[phase]
            if not count:
                continue
            picked = self._closest(family, work, _fallbacks(phase))
            if picked is None:
                return Prediction(work, None, why=f"no {phase} pass of a {work.kind} run measured")
            per_item, sources = picked
            total += count * per_item
            used.update(sources)
        return Prediction(work, total, tuple(sorted(used)))

    def _closest(self, family: list[Observation], work: Work, phases: tuple[str, ...]
                 ) -> tuple[float, list[str]] | None:
        """Median seconds per item of the observations closest to `work` (same method, then same code, same batch,
        same threads), scaled to its tokens; the first of `phases` any of them measured."""
        for phase in phases:
            having = [obs for obs in family if phase in obs.seconds]
            if not having:
                continue
            score = lambda obs: (obs.method == work.spec.method, obs.commit == self.commit,  # noqa: E731
                                 obs.batch == work.batch, obs.threads == self.threads)
            best = max(map(score, having))
            chosen = [obs for obs in having if score(obs) == best]
            values = [obs.seconds[phase] * self._token_scale(work, obs, phase) for obs in chosen]
            return statistics.median(values), [obs.source for obs in chosen]
        return None

    def _token_scale(self, work: Work, obs: Observation, phase: str) -> float:
        """Per-image cost grows with the sequence: (base + work's extra) / (base + observed extra). A frozen
        trunk's head and a probe call do not depend on them."""
        base = self.base_tokens.get(work.spec.backbone)
        if base is None or phase == "probe" or work.kind == "frozen":
            return 1.0
        return (base + work.extra_tokens) / (base + obs.extra_tokens)


def _fallbacks(phase: str) -> tuple[str, ...]:
    """The passes whose speed stands in for `phase` when it was not measured: val and test are both no-grad passes
    over images; a setup pass is a no-grad pass of the backbone."""
    return {"val": ("val", "test"), "test": ("test", "val"), "setup": ("setup", "test", "val")}.get(phase, (phase,))


@functools.lru_cache(maxsize=None)
def base_tokens(backbone: str) -> int:
    """Tokens of one image of `backbone` before a method adds any (patches, class and register tokens), from its
    architecture built on the meta device: no weights are read or allocated."""
    import timm

    entry = backbone_entry(backbone)
    with torch.device("meta"):
        vit = timm.create_model(entry.timm_name.split(".")[0], pretrained=False, num_classes=0, **entry.arch_kwargs)
    return int(vit.patch_embed.num_patches) + int(vit.num_prefix_tokens)


@dataclass(frozen=True)
class Check:
    """A finished run's recorded seconds (its timed phases) beside the model's prediction for it."""

    record: RunRecord
    recorded: float
    prediction: Prediction

    @property
    def error(self) -> float | None:
        """(predicted − recorded) / recorded; None without a prediction."""
        if self.prediction.seconds is None or self.recorded <= 0:
            return None
        return self.prediction.seconds / self.recorded - 1


def check_records(records: Sequence[RunRecord], calibration: list[Observation], leave_one_out: bool = True
                  ) -> list[Check]:
    """Predict every finished record of the store as if it had not run, and set it beside its recorded seconds.

    With `leave_one_out`, a run is predicted from the calibration and every other record (never its own); without,
    from the calibration alone, as a dry run before any of them ran predicts them.
    """
    observed = {record.id: observe(record) for record in records}
    checks = []
    for record in records:
        sizes = _recorded_sizes(record)
        if observed.get(record.id) is None or sizes is None:
            continue
        others = [o for rid, o in observed.items() if o is not None and rid != record.id] if leave_one_out else []
        clock = record.wallclock
        # A frozen trunk's run paid the feature pass only when it did not read the cache.
        paid = "setup" in observed[record.id].seconds
        work = work_of(record.spec, sizes, pays_features=paid)
        model = CostModel(calibration + others, record.provenance.device, record.provenance.torch_threads,
                          {record.spec.backbone: base_tokens(record.spec.backbone)}, record.provenance.git_commit)
        recorded = clock.prompt_construction + clock.feature_cache + clock.train + clock.eval + clock.probe
        checks.append(Check(record, recorded, model.predict(work)))
    return checks


# Calibration ---------------------------------------------------------------------------------------------------


def representatives() -> dict[str, str]:
    """One method per kind for `bench perf --calibrate`: the first registered name of each kind at its defaults."""
    out: dict[str, str] = {}
    for name in sorted(METHODS.names()):
        kind = _shape(name, _hparams_key({}), _hparams_key({})).kind
        out.setdefault(kind, name)
    return {kind: out[kind] for kind in KINDS if kind in out}


def read_calibration(path: Path) -> tuple[list[Observation], str | None]:
    """The observations of a calibration file and the date it was written; none when it does not exist."""
    if not path.is_file():
        return [], None
    try:
        data = json.loads(path.read_text())
        return [Observation.from_dict(o) for o in data["observations"]], data.get("date")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"calibration file {path} is not one `bench perf --calibrate` wrote ({exc}); "
                         "delete it or rerun bench perf --calibrate") from None


def write_calibration(path: Path, observations: list[Observation]) -> None:
    """Merge `observations` into the calibration file: they replace those of the same backbone and device."""
    kept, _ = read_calibration(path)
    fresh = {(o.backbone, o.device) for o in observations}
    merged = [o for o in kept if (o.backbone, o.device) not in fresh] + observations
    with replacing(path, "the calibration") as temporary:
        temporary.write_text(json.dumps({"date": date.today().isoformat(),
                                         "observations": [o.to_dict() for o in merged]}, indent=1))


def observations_of(records: Iterable[RunRecord]) -> list[Observation]:
    return [obs for record in records if (obs := observe(record)) is not None]


# Estimates of a plan --------------------------------------------------------------------------------------------


@dataclass
class StageEstimate:
    """A stage's pending runs, the images they process and the seconds predicted for those with a basis.

    Attributes:
        finished: runs of the stage the grid leaves as recorded (they cost nothing more).
        unknown: predictions of the runs with no basis.
    """

    title: str
    runs: int = 0
    finished: int = 0
    images: int = 0
    seconds: float = 0.0
    sources: set[str] = field(default_factory=set)
    unknown: list[Prediction] = field(default_factory=list)


class Estimator:
    """Predicts a plan stage by stage; the first run of each frozen-trunk feature group pays the feature pass."""

    def __init__(self, model: CostModel, sizes: dict[str, SplitSizes], finished: set[str]) -> None:
        self.model = model
        self.sizes = sizes
        self.finished = finished
        self._seen: set[tuple[Any, ...]] = set()

    def stage(self, title: str, runs: Sequence[Sequence[RunSpec]]) -> StageEstimate:
        """`runs`: each run as its candidate specs, one when known; a stage-2 run before selection is predicted as
        the mean over the stage-1 points it may be trained with."""
        out = StageEstimate(title)
        for candidates in runs:
            if any(spec.run_id in self.finished for spec in candidates):
                out.finished += 1
                continue
            out.runs += 1
            predictions = [self._predict(spec) for spec in candidates]
            for spec in candidates:
                self._seen.add(feature_group(spec))
            out.images += round(statistics.mean(p.work.total_images for p in predictions))
            missing = [p for p in predictions if p.seconds is None]
            if missing:
                out.unknown.append(missing[0])
                continue
            out.seconds += statistics.mean(p.seconds for p in predictions)
            out.sources.update(s for p in predictions for s in p.sources)
        return out

    def _predict(self, spec: RunSpec) -> Prediction:
        work = work_of(spec, self.sizes[spec.task], feature_group(spec) not in self._seen)
        return self.model.predict(work)


def hours_line(stages: Sequence[StageEstimate], model: CostModel, gpu: bool) -> str:
    """The total and its basis, in one line: `≈ 14 GPU-h on NVIDIA H100 80GB, from 23 records of this machine`."""
    seconds = sum(s.seconds for s in stages)
    sources = set().union(*(s.sources for s in stages)) if stages else set()
    records = sum(src.startswith("record ") for src in sources)
    basis = []
    if records:
        basis.append(f"{records} record(s) of this machine")
    if any(src.startswith("calibration") for src in sources):
        basis.append(f"calibration {model.calibration} ({model.calibrated_on})")
    unit = "GPU-h" if gpu else "CPU-h"
    line = f"≈ {hours(seconds)} {unit} on {model.device}"
    line += f", from {' and '.join(basis)}" if basis else ""
    unknown = [p for s in stages for p in s.unknown]
    if unknown:
        line += f"; {len(unknown)} run(s) with no basis, not counted"
    return line


def hours(seconds: float) -> str:
    """Hours to three significant figures, in plain notation: 9,480, 14.2, 0.0512."""
    value = seconds / 3600
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}" if value >= 0.01 else f"{value:.2g}"


def no_basis_lines(stages: Sequence[StageEstimate]) -> list[str]:
    """The runs with no basis, grouped by why, each with a few of their names."""
    by_why: dict[str, list[str]] = {}
    for stage in stages:
        for p in stage.unknown:
            by_why.setdefault(p.why, []).append(p.work.spec.label)
    return [f"no basis for {len(labels)} run(s) ({why}): {', '.join(labels[:3])}{' …' if len(labels) > 3 else ''}"
            for why, labels in by_why.items()]


def check_summary(checks: Sequence[Check]) -> str:
    """One line: how close the predictions came to the recorded seconds."""
    errors = [c.error for c in checks if c.error is not None]
    missing = len(checks) - len(errors)
    if not errors:
        return f"{len(checks)} run(s), none with a basis to predict from"
    predicted = sum(c.prediction.seconds for c in checks if c.error is not None)
    recorded = sum(c.recorded for c in checks if c.error is not None)
    within = sum(abs(e) <= 0.25 for e in errors) / len(errors)
    line = (f"{len(errors)} run(s) predicted: median |error| {statistics.median(map(abs, errors)):.1%}, "
            f"{within:.0%} within 25%, total predicted {predicted / 3600:.3g} h against {recorded / 3600:.3g} h "
            f"recorded ({predicted / recorded - 1:+.1%})")
    return line + (f"; {missing} with no basis" if missing else "")
