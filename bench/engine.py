"""Train and evaluate one run in four steps: `prepare` (task, backbone, the method's adaptation), `fit` (the epochs),
`evaluate` (test, in the stages that may read it) and `record` (the JSON-ready record the store writes). Beside the
record, a run returns its `Outputs`: what it learned and what it predicted on test, which `bench.artifacts` keeps.

The engine trains whatever the method marked learnable. When the method says its trunk is frozen (the linear probe),
features of the train and val splits are extracted once and only the head trains on them; test features are
extracted in the final evaluation, so the test split is read once, at the end. Train and val features are kept in
the `Caches` the run is given, so the other runs of a sweep (and the final stage's seeds) reuse one feature pass.
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from bench import BenchError, recipes
from bench.artifacts import Predictions
from bench.backbone import Backbone, LoadedBackbones, fresh_pool_norm
from bench.cache import TensorCache, cache_key
from bench.config import RunSpec, TrainConfig
from bench.data import TASKS, Batch, LoadedTasks, Preprocess, Split, Task, TaskData, tensor_batches
from bench.decoded import DataPath, DecodeCache
from bench.imagefiles import through_pipelines
from bench.method import METHODS, Adapted, BuildContext, Probe
from bench.protocol import PIPELINES, Protocol, init_head
from bench.record import CpuShare, Memory, Metrics, ParamCounts, Provenance, RunRecord, TaskInfo, Throughput, WallClock

EpochCallback = Callable[[int, int, float, float], None]


@dataclass
class Caches:
    """What the runs of one worker share, so that a sweep computes each of these once.

    A run given no caches shares nothing: it gets empty ones, held in memory for that run alone. What a run read
    from them is its own (its record's `data_path`), never kept here.

    Attributes:
        features: frozen trunks' features of train/val splits, by everything they depend on.
        centroids: SPT's k-means centroids (see `methods.prompt`).
        decoded: decoded image files of file-backed splits (see `bench.decoded`).
        backbones: the backbones loaded, so that the runs a worker executes pay the checkpoint load once.
        tasks: the tasks loaded, so that they read their list files once.
    """

    features: TensorCache = field(default_factory=TensorCache)
    centroids: TensorCache = field(default_factory=TensorCache)
    decoded: DecodeCache = field(default_factory=DecodeCache)
    backbones: LoadedBackbones = field(default_factory=LoadedBackbones)
    tasks: LoadedTasks = field(default_factory=LoadedTasks)

    @classmethod
    def for_results(cls, root: Path) -> Caches:
        """Caches kept under `root/cache/`, where runs in other processes, or on other machines of a cluster, that
        write to the same results directory find them; backbones are held in this process."""
        return cls(TensorCache(root / "cache" / "features"), TensorCache(root / "cache" / "centroids"),
                   DecodeCache(root / "cache" / "decoded"))


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


@dataclass
class _Timer:
    """Wall-clock and CPU seconds spent inside `with`; the CPU clock counts every thread of this process."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def __enter__(self) -> "_Timer":
        self._start, self._cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start

    def cpu_share(self, threads: int) -> float | None:
        """CPU seconds per wall-clock second per torch thread: near 1 when the threads had a core each, well below
        when other processes shared the cores; None when nothing was timed."""
        return self.cpu_seconds / (self.seconds * threads) if self.seconds > 0 else None


@dataclass
class Prepared:
    """A run made ready to train: its data, the adapted model and the inputs each pass reads.

    Attributes:
        model: what trains (the head alone on a frozen trunk's cached features, else trunk and head).
        prepare: what turns a batch of `train_batches`/`val_batches` into the model's input.
        train_batches: generator -> shuffled training batches (cached features or images).
        val_batches: () -> validation batches; None when the run does not score val (the final stage).
        probe_batch: the method's fixed probe images, preprocessed; None when the method measures nothing.
        data_path: what this run's splits read from the decode cache.
        initial: the trunk's learnable tensors as the method constructed them from the data (see
            `Adapted.constructed`), on the CPU; empty when it constructed nothing.
    """

    spec: RunSpec
    config: TrainConfig
    pipeline: Protocol
    device: torch.device
    task: Task
    data: TaskData
    train_split: Split
    backbone: Backbone
    backbone_info: dict[str, Any]
    preprocess: Preprocess
    adapted: Adapted
    learnable: list[tuple[str, nn.Parameter]]
    generator: torch.Generator
    model: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    train_batches: Callable[[torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    val_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None
    probe_batch: torch.Tensor | None
    timers: dict[str, _Timer]
    data_path: DataPath
    initial: dict[str, torch.Tensor]


@dataclass
class Fitted:
    curves: dict[str, list[Any]]
    epochs: int


@dataclass(frozen=True)
class Outputs:
    """What a run leaves besides its record, for `bench.artifacts` to write beside it.

    Attributes:
        learned: exactly what the run learned (`learned_tensors`), on the CPU.
        initial: the trunk's learnable tensors as constructed from the data before training (SPT's prompts); empty
            for methods that construct nothing.
        predictions: per test image; None in the tune stage, which never reads test.
        whole_backbone: the run learned every backbone parameter (full fine-tuning), so `learned` is a whole
            backbone, kept only when asked (`--save-full`).
    """

    learned: dict[str, torch.Tensor]
    initial: dict[str, torch.Tensor]
    predictions: Predictions | None
    whole_backbone: bool


def run(
    spec: RunSpec, device: str = "cpu", on_epoch: EpochCallback | None = None, data_root: Path | None = None,
    caches: Caches | None = None,
) -> RunRecord:
    """Execute `spec` and return its record: prepare, fit, evaluate on test, record.

    `data_root` is where file-backed tasks find their datasets; it is not part of the spec (nor its id): the same
    data may live in different places on different machines. `caches` are shared with the other runs of a worker;
    without them the run computes everything itself.
    """
    return run_with_outputs(spec, device, on_epoch, data_root, caches)[0]


def run_with_outputs(
    spec: RunSpec, device: str = "cpu", on_epoch: EpochCallback | None = None, data_root: Path | None = None,
    caches: Caches | None = None,
) -> tuple[RunRecord, Outputs]:
    """`run`, with what the run learned and predicted (`Outputs`)."""
    prepared = prepare(spec, torch.device(device), data_root, caches if caches is not None else Caches())
    fitted = fit(prepared, on_epoch)
    test_acc, test_seconds, predictions = evaluate(prepared)
    done = record(prepared, fitted, test_acc, test_seconds)
    return done, Outputs(learned_tensors(prepared.adapted), prepared.initial, predictions, done.params.whole_backbone)


def learned_tensors(adapted: Adapted) -> dict[str, torch.Tensor]:
    """Exactly what a run learned, by name in `nn.Sequential`-free form (`trunk.*`, `head.*`): the trunk's learnable
    parameters and the head's whole state (its parameters and, for a probe's BatchNorm, its running statistics)."""
    trunk = {name: p for name, p in adapted.trunk.named_parameters(prefix="trunk") if p.requires_grad}
    head = adapted.head.state_dict(prefix="head.")
    # Copies: safetensors refuses tensors that share storage, and the files must not alias the live model.
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in {**trunk, **head}.items()}


def prepare(spec: RunSpec, dev: torch.device, data_root: Path | None, caches: Caches) -> Prepared:
    """Load the task and the backbone, let the method adapt it, and set up what each pass reads."""
    method = METHODS.get(spec.method)
    config: TrainConfig = method.config_cls.from_overrides(spec.hparams)
    pipeline = Protocol.from_values(spec.protocol)
    task = TASKS.get(spec.task)
    data_path = DataPath(caches.decoded)
    data = pipeline_data(caches.tasks.get(task, data_root), pipeline).with_data_path(data_path)
    # The field's protocol: tuning scores on val and never reads test; the final stage trains on train+val (or on
    # train, `final_train=train`: VPT's FGVC) and is the only stage that reads test; `fixed` trains on train, follows
    # val and reports test.
    merged = trains_on_val(spec.stage, pipeline)
    train_split = data.train.merged_with(data.val) if merged else data.train
    scores_val = spec.stage != "final"

    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    backbone = caches.backbones.get(spec.backbone, spec.weights, drop_path=config.drop_path)
    pipeline_backbone(backbone, pipeline)
    backbone.model.to(dev)
    preprocess = Preprocess(backbone.input_size, *pipeline.mean_std(backbone.mean, backbone.std)).to(dev)
    if _is_cuda(dev):
        torch.cuda.reset_peak_memory_stats(dev)

    # Described before the method adapts it: methods that inject layers (peft's) add their parameters to the model.
    backbone_info = backbone.describe()
    ctx = BuildContext(backbone, task.num_classes, train_split, preprocess, generator, dev, caches.centroids,
                       pipeline)
    timers = {name: _Timer() for name in ("build", "feature_cache", "train", "eval", "test", "probe")}
    with timers["build"]:
        adapted = method.build(config, ctx)
    # Taken before anything trains them, on the CPU: the artifact of what the method built from the data.
    initial = {name: t.detach().to("cpu", copy=True) for name, t in adapted.trunk.named_parameters(prefix="trunk")
               if t.requires_grad} if adapted.constructed else {}
    adapted = pipeline_head(adapted, pipeline)
    adapted.trunk.to(dev)
    adapted.head.to(dev)
    probe_batch = None
    if adapted.probe is not None:
        # The first images of the unshuffled train split: the same batch at every epoch, and never the test split.
        probe_batch = preprocess(next(iter(train_split.batches(adapted.probe.images)))[0].to(dev))

    batch = config.batch_size
    if adapted.trunk_frozen:
        # A frozen trunk is a fixed function of the backbone, so its features depend on what builds it and what it
        # reads; never on the seed or the head's hyper-parameters. The test split is never cached.
        # (The batch size is in the key only because float results may differ, in the last bits, across batch sizes.)
        source = (spec.method, type(adapted.trunk).__qualname__, adapted.info, backbone_info, spec.task,
                  data.info, batch, dev.type, *([spec.protocol] if spec.protocol else []))
        train_name = "train+val" if merged else "train"
        with timers["feature_cache"]:
            train_in = _cached_features(caches.features, source, train_name, adapted.trunk, train_split, preprocess,
                                        batch, dev, pipeline.precision)
            val_in = _cached_features(caches.features, source, "val", adapted.trunk, data.val, preprocess, batch,
                                      dev, pipeline.precision) if scores_val else None
        model: nn.Module = adapted.head
        prepare_batch: Callable[[torch.Tensor], torch.Tensor] = _identity
        train_batches = lambda gen: _batches(tensor_batches(*train_in, batch, gen), batch, pipeline)  # noqa: E731
        val_batches = (lambda: tensor_batches(*val_in, batch)) if scores_val else None  # noqa: E731
    else:
        model = nn.Sequential(adapted.trunk, adapted.head)
        prepare_batch = preprocess
        train_batches = lambda gen: _batches(train_split.batches(batch, gen, dev), batch, pipeline)  # noqa: E731
        val_batches = (lambda: data.val.batches(batch, device=dev)) if scores_val else None  # noqa: E731
    return Prepared(spec, config, pipeline, dev, task, data, train_split, backbone, backbone_info, preprocess, adapted,
                    _learnable(adapted), generator, model, prepare_batch, train_batches, val_batches, probe_batch,
                    timers, data_path, initial)


def pipeline_data(data: TaskData, pipeline: Protocol) -> TaskData:
    """The task's splits through the pipeline's images: the family's own, or a reference's named pipeline."""
    return data if pipeline.transforms == "task" else through_pipelines(data, PIPELINES.get(pipeline.transforms))


def pipeline_backbone(backbone: Backbone, pipeline: Protocol) -> None:
    """What the pipeline changes in the backbone before it is described and adapted: VPT's fresh pooling norm."""
    if pipeline.pool_norm == "fresh":
        fresh_pool_norm(backbone.model)


def pipeline_head(adapted: Adapted, pipeline: Protocol) -> Adapted:
    """`adapted` with the head the pipeline trains. Drawn after the build, from the global RNG the build left, so
    the default head's draws stay where they were; a `bn-` head gets a BatchNorm before it."""
    if pipeline.head_init == Protocol.head_init:
        return adapted
    return replace(adapted, head=init_head(adapted.head, pipeline.head_init))


def fit(p: Prepared, on_epoch: EpochCallback | None = None) -> Fitted:
    """Train for the configured epochs: the method's probe at init and after every epoch, val accuracy per epoch."""
    curves: dict[str, list[Any]] = {"train_loss": [], "val_acc": []}
    if p.probe_batch is not None:
        with p.timers["probe"]:
            _measure(p.adapted.probe, p.adapted.trunk, p.probe_batch, curves)
    config, dev = p.config, p.device
    optimizer = _optimizer(p.learnable, config)
    steps_per_epoch = steps_in_epoch(len(p.train_split), config.batch_size, p.pipeline.drop_last)
    epochs = config.epochs or p.task.epochs
    unit = steps_per_epoch if config.lr_step == "epoch" else 1
    lr_schedule = warmup_cosine(optimizer, round(config.warmup_epochs * steps_per_epoch / unit),
                                epochs * steps_per_epoch // unit, config.min_lr / config.lr, unit,
                                config.warmup_lr / config.lr, config.warmup_prefix)
    # The cool-down trains on at min_lr, where the schedule ends.
    epochs += config.cooldown_epochs

    for epoch in range(epochs):
        p.model.train()
        with p.timers["train"]:
            train_loss = train_epoch(p.model, p.train_batches(p.generator), p.prepare, optimizer, lr_schedule, dev,
                                     p.pipeline.precision)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch + 1}")
        val_acc = None
        if p.val_batches is not None:
            with p.timers["eval"]:
                val_acc = _accuracy(p.model, p.val_batches(), p.prepare, dev, p.pipeline.precision)
            curves["val_acc"].append(val_acc)
        curves["train_loss"].append(train_loss)
        if p.probe_batch is not None:
            with p.timers["probe"]:
                _measure(p.adapted.probe, p.adapted.trunk, p.probe_batch, curves)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, train_loss, val_acc)
    return Fitted(curves, epochs)


def evaluate(p: Prepared) -> tuple[float | None, float, Predictions | None]:
    """Test accuracy after training, the seconds it took, and the predictions per test image, all from the one test
    pass; (None, 0, None) in the tune stage, which never reads test."""
    if p.spec.stage == "tune":
        return None, 0.0, None
    scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with p.timers["test"]:
        # The frozen-trunk path trained on cached features; the test images go through trunk and head once.
        model = nn.Sequential(p.adapted.trunk, p.adapted.head) if p.adapted.trunk_frozen else p.model
        test_acc = _accuracy(model, p.data.test.batches(p.config.batch_size, device=p.device), p.preprocess, p.device,
                             p.pipeline.precision, scored)
    return test_acc, p.timers["test"].seconds, predictions_of(scored)


def predictions_of(scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Predictions:
    """`Predictions` from the (logits, predicted, labels) batches `_accuracy` kept."""
    logits, predicted, labels = (torch.cat(part).cpu().numpy() for part in zip(*scored))
    return Predictions.from_logits(logits, predicted, labels)


def record(p: Prepared, fitted: Fitted, test_acc: float | None, test_seconds: float) -> RunRecord:
    """The run's record, as the store writes it."""
    spec, timers = p.spec, p.timers
    steps = steps_in_epoch(len(p.train_split), p.config.batch_size, p.pipeline.drop_last)
    train_images = fitted.epochs * min(len(p.train_split), steps * p.config.batch_size)
    # Wall-clock from a run whose cores other work shared is not a benchmark; this says which runs those were.
    # Only on the CPU: a GPU run's CPU mostly waits on the device, so its share says nothing.
    shares = {phase: None if _is_cuda(p.device) else timers[phase].cpu_share(torch.get_num_threads())
              for phase in ("build", "train")}
    return RunRecord(
        id=spec.run_id,
        spec=spec,
        status="done",
        recipe=recipes.describe(spec.recipe) if spec.recipe else None,
        protocol=p.pipeline.to_dict(),
        task=TaskInfo(p.task.name, p.task.group, p.task.num_classes, dict(p.data.info)),
        backbone=p.backbone_info,
        method_info=p.adapted.info,
        curves=fitted.curves,
        metrics=Metrics(val_acc=fitted.curves["val_acc"][-1] if fitted.curves["val_acc"] else None, test_acc=test_acc),
        params=_param_counts(p.adapted, p.learnable, p.backbone_info["num_params"]),
        extra_tokens=p.adapted.extra_tokens,
        wallclock=WallClock(
            prompt_construction=p.adapted.setup_seconds,
            feature_cache=timers["feature_cache"].seconds,
            train=timers["train"].seconds,
            eval=timers["eval"].seconds + test_seconds,
            probe=timers["probe"].seconds,
        ),
        cpu_share=CpuShare(**shares),
        throughput=Throughput(
            train_images_per_s=train_images / timers["train"].seconds if timers["train"].seconds else None,
            # Inference throughput: one no-grad pass over the test split, preprocessing included.
            test_images_per_s=len(p.data.test) / test_seconds if test_acc is not None else None,
        ),
        memory=_peak_memory(p.device),
        # Which decode-cache entries the splits read or built (with the first pass's cost), or why they read files;
        # empty when there was no cache and every pass decoded the files.
        data_path=p.data_path.events,
        provenance=Provenance(**provenance(p.device, p.pipeline.precision),
                              **_input_provenance(p.backbone, p.preprocess, p.pipeline)),
    )


def train_epoch(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    dev: torch.device,
    precision: str = "auto",
) -> float:
    """One pass of cross-entropy training over `batches`; returns the mean loss. A function of its own so that
    `bench perf` times exactly the loop the engine runs; the loss is summed on the device, read once per epoch."""
    loss_fn = nn.CrossEntropyLoss()
    total = torch.zeros((), device=dev)
    seen = 0
    for inputs, labels in batches:
        inputs, labels = prepare(inputs.to(dev, non_blocking=True)), labels.to(dev, non_blocking=True)
        with mixed_precision(dev, precision):
            loss = loss_fn(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        total += loss.detach() * len(labels)
        seen += len(labels)
    return float(total) / seen


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def trains_on_val(stage: str, pipeline: Protocol) -> bool:
    """Whether a run of `stage` trains on train+val: the final stage does, unless its pipeline keeps it to train."""
    return stage == "final" and pipeline.final_train == "train+val"


def steps_in_epoch(images: int, batch_size: int, drop_last: bool) -> int:
    """Optimiser steps per epoch: every batch, or only the full ones with `drop_last` (a split smaller than one
    batch still trains it: an epoch of no step would not be a run)."""
    return max(1, images // batch_size) if drop_last else math.ceil(images / batch_size)


def _batches(batches: Iterator[Batch], batch_size: int, pipeline: Protocol) -> Iterator[Batch]:
    """`batches`, without the last partial one when the pipeline drops it (the shuffled order is drawn in full
    either way, as a DataLoader with `drop_last` draws it)."""
    for index, (inputs, labels) in enumerate(batches):
        if pipeline.drop_last and index > 0 and len(labels) < batch_size:
            return
        yield inputs, labels


@torch.no_grad()
def _measure(probe: Probe, trunk: nn.Module, images: torch.Tensor, curves: dict[str, list[Any]]) -> None:
    """Append the method's probe measurements to `curves`, one entry per curve, in eval mode (no prompt dropout)."""
    trunk.eval()
    for name, value in probe.measure(images).items():
        curves.setdefault(name, []).append(value)


def _input_provenance(backbone: Backbone, preprocess: Preprocess, pipeline: Protocol) -> dict[str, Any]:
    """The timm model the weights belong to, and exactly what was done to a uint8 image before the backbone."""
    hub = backbone.weights_source.startswith("hub:")
    return {
        "timm_name": backbone.weights_source[len("hub:"):] if hub else backbone.model.pretrained_cfg["architecture"],
        "transform": {
            "resize": f"bicubic, antialiased, to {preprocess.input_size}×{preprocess.input_size} when sizes differ",
            "scale": "uint8 / 255",
            **dict(zip(("mean", "std"), map(list, pipeline.mean_std(backbone.mean, backbone.std)))),
        },
    }


def _is_cuda(dev: torch.device) -> bool:
    return dev.type == "cuda"


def _learnable(adapted: Adapted) -> list[tuple[str, nn.Parameter]]:
    named = list(adapted.trunk.named_parameters(prefix="trunk")) + list(adapted.head.named_parameters(prefix="head"))
    unique: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in named:
        if param.requires_grad:
            unique.setdefault(id(param), (name, param))
    return list(unique.values())


def _param_counts(adapted: Adapted, learnable: list[tuple[str, nn.Parameter]], backbone_params: int) -> ParamCounts:
    total = sum(p.numel() for _, p in learnable)
    head = sum(p.numel() for p in adapted.head.parameters() if p.requires_grad)
    return ParamCounts(
        backbone=backbone_params,
        learnable=total,
        learnable_without_head=total - head,
        head=head,
        learnable_pct=100.0 * total / backbone_params,
        learnable_without_head_pct=100.0 * (total - head) / backbone_params,
    )


def parameter_groups(learnable: list[tuple[str, nn.Parameter]], config: TrainConfig) -> list[dict[str, Any]]:
    """Weight-decay groups as the SPT reference forms them (`utils.param_groups_weight_decay`): 1-D tensors (biases,
    norm parameters) undecayed, the head's weight with `head_weight_decay`, every other tensor with `weight_decay`.
    With `head_weight_decay` None this is VPT's rule too: everything decayed alike but the head's bias."""
    head_decay = config.weight_decay if config.head_weight_decay is None else config.head_weight_decay
    groups = [
        {"params": [p for _, p in learnable if p.ndim <= 1], "weight_decay": 0.0},
        {"params": [p for n, p in learnable if p.ndim > 1 and not n.startswith("head.")],
         "weight_decay": config.weight_decay},
        {"params": [p for n, p in learnable if p.ndim > 1 and n.startswith("head.")], "weight_decay": head_decay},
    ]
    return [g for g in groups if g["params"]]


def _optimizer(learnable: list[tuple[str, nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    if not learnable:
        raise BenchError("the method left nothing learnable; check its configuration")
    groups = parameter_groups(learnable, config)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0, steps_per_unit: int = 1,
    start: float = 0.0, prefix: bool = True,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor as the SPT reference's `adjust_learning_rate` (and VPT's `WarmupCosineSchedule`): linear
    from `start` (0) over `warmup` units, then a half cosine from 1 down to `floor` (min_lr / lr) at unit `total`, and
    `floor` after it. A unit is `steps_per_unit` optimiser steps: 1 for a per-step schedule, an epoch's steps for a
    per-epoch one. Without `prefix` the cosine runs from unit 0, the warm-up inside it (timm's `CosineLRScheduler`
    with `warmup_prefix=False`)."""

    def factor(step: int) -> float:
        unit = step // steps_per_unit
        if unit < warmup:
            return start + (1.0 - start) * unit / warmup
        progress = (unit - warmup) / max(1, total - warmup) if prefix else unit / max(1, total)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cached_features(
    cache: TensorCache, source: tuple[Any, ...], split_name: str, trunk: nn.Module, split: Split,
    preprocess: Preprocess, batch_size: int, dev: torch.device, precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    compute = lambda: _features(trunk, split, preprocess, batch_size, dev, precision)  # noqa: E731
    features, labels = cache.get_or_compute(cache_key(source, split_name), compute)
    return features.to(dev), labels.to(dev)


@torch.no_grad()
def _features(
    trunk: nn.Module, split: Split, preprocess: Preprocess, batch_size: int, dev: torch.device, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    trunk.eval()
    feats, labels = [], []
    for images, y in split.batches(batch_size, device=dev):
        with mixed_precision(dev, precision):
            feats.append(trunk(preprocess(images.to(dev, non_blocking=True))).float())
        labels.append(y.to(dev, non_blocking=True))
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def _accuracy(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    dev: torch.device,
    precision: str = "auto",
    scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
) -> float:
    """Accuracy (%) of `model` on `batches`; with `scored`, each batch's (float32 logits, predicted classes, labels)
    is appended to it, on the device, so predictions and accuracy come from the same pass."""
    model.eval()
    # Counted on the device and read once: a read per batch would stop the host from preparing the next batch
    # while the device computes this one.
    correct = torch.zeros((), dtype=torch.long, device=dev)
    count = 0
    for inputs, labels in batches:
        labels = labels.to(dev, non_blocking=True)
        with mixed_precision(dev, precision):
            logits = model(prepare(inputs.to(dev, non_blocking=True)))
            predictions = logits.argmax(dim=1)
        correct += (predictions == labels).sum()
        count += len(labels)
        if scored is not None:
            scored.append((logits.float(), predictions, labels))
    return 100.0 * int(correct) / count


def mixed_precision(dev: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """`auto`: bf16 autocast on CUDA (tensor cores; parameters, optimiser state and the loss stay fp32), fp32 on the
    CPU, where bf16 is slower without AMX; `fp32`: fp32 everywhere (the SPT and VPT references)."""
    bf16 = precision == "auto" and _is_cuda(dev)
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _peak_memory(dev: torch.device) -> Memory:
    if _is_cuda(dev):
        return Memory("cuda_max_allocated", torch.cuda.max_memory_allocated(dev) / 2**20)
    # ru_maxrss is the whole process's peak in KiB on Linux: an upper bound for this run.
    return Memory("process_peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def provenance(dev: torch.device, precision: str = "auto") -> dict[str, Any]:
    versions = {}
    for package in ("bench", "torch", "timm", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": {**versions, "python": platform.python_version()},
        "git_commit": CODE_COMMIT,
        "torch_device": str(dev),
        "device": torch.cuda.get_device_name(dev) if _is_cuda(dev) else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16 autocast" if precision == "auto" and _is_cuda(dev) else "fp32",
    }


def _git_commit() -> str | None:
    """HEAD of the checkout this code was imported from, with `+dirty` when tracked files differ from it."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)

    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = head.stdout.strip()
    if head.returncode != 0 or not commit:
        return None
    return f"{commit}+dirty" if status.stdout.strip() else commit


# Read once, when the code is imported: a long grid must record the code it runs, not whatever HEAD is by the time
# each of its runs finishes.
CODE_COMMIT = _git_commit()
