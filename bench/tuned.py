"""A finished run's tuned model, back from its artifacts: `load_run` rebuilds it (the backbone from the record's spec,
the method's structure over it, the learned tensors loaded strictly), `rescore` scores it again on a split, and
`export_peft` writes peft's own `save_pretrained` layout for the methods built on peft.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench import BenchError
from bench.artifacts import LEARNED, ArtifactError, load_predictions, load_tensors, read_record
from bench.atomic import replacing
from bench.backbone import Backbone, load_backbone
from bench.config import RunSpec
from bench.data import TASKS, LoadedTasks, Preprocess
from bench.engine import (
    Caches, _accuracy, learned_tensors, pipeline_backbone, pipeline_data, pipeline_head, predictions_of,
)
from bench.method import METHODS, BuildContext
from bench.protocol import Protocol
from bench.record import RunRecord

SPLITS = ("test", "val")


class Tuned(nn.Module):
    """A run's tuned model: `head(trunk(images))` on images as the backbone receives them (the engine's model).

    Attributes:
        trunk: the adapted backbone, images -> pooled features.
        head: features -> logits.
        preprocess: uint8 images -> the backbone's input (resize, scale, the run's mean/std); apply it first to
            images straight from a dataset.
        record: the run's record.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, preprocess: Preprocess, record: RunRecord) -> None:
        super().__init__()
        self.trunk, self.head, self.preprocess = trunk, head, preprocess
        self.record = record

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def load_run(results: str | Path, run_id: str, device: str = "cpu", caches: Caches | None = None) -> Tuned:
    """Run `run_id`'s tuned model from `results`, in eval mode on `device`, ready to evaluate. `caches`: backbones
    already loaded, which the runs of one `bench eval` share (each run adapts its own copy).

    Raises:
        ArtifactError: no record, or its learned tensors are missing, corrupt, or do not fit the method as built.
        BenchError: the backbone the record names cannot be rebuilt as it was (other weights).
    """
    import bench.methods  # noqa: F401  (registers the methods)
    import bench.tasks  # noqa: F401  (registers the tasks)

    record = read_record(Path(results), run_id)
    learned, _ = load_tensors(Path(results), record, LEARNED)
    spec = record.spec
    method = METHODS.get(spec.method)
    config = method.config_cls.from_overrides(spec.hparams)
    pipeline = Protocol.from_values(spec.protocol)
    load = caches.backbones.get if caches is not None else load_backbone
    backbone = load(spec.backbone, spec.weights, drop_path=config.drop_path)
    pipeline_backbone(backbone, pipeline)  # before the check: the engine described the backbone after it
    _check_backbone(record, backbone)
    preprocess = Preprocess(backbone.input_size, *pipeline.mean_std(backbone.mean, backbone.std))
    # No training split: the method builds its structure only (SPT skips its construction); the learned tensors,
    # the head's included, are loaded over whatever it drew.
    ctx = BuildContext(backbone, TASKS.get(spec.task).num_classes, None, preprocess,
                       torch.Generator().manual_seed(spec.seed), torch.device("cpu"), pipeline=pipeline)
    # The head the engine trained; its draws are overwritten by the load.
    adapted = pipeline_head(method.build(config, ctx), pipeline)
    expected = {name: tuple(t.shape) for name, t in learned_tensors(adapted).items()}
    found = {name: tuple(t.shape) for name, t in learned.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(n for n in found if found[n] != expected[n])
        raise ArtifactError(f"run {run_id}: {LEARNED}.safetensors does not fit {spec.method} as built (first "
                            f"mismatch: {wrong[0]}); it was written by another version of the method: rerun the run")
    model = Tuned(adapted.trunk, adapted.head, preprocess, record)
    unexpected = model.load_state_dict(learned, strict=False).unexpected_keys
    assert not unexpected, unexpected  # every name was matched against the built model above
    return model.to(device).eval()


def _check_backbone(record: RunRecord, backbone: Backbone) -> None:
    recorded = record.backbone or {}
    now = backbone.describe()
    for key in ("checkpoint_sha256", "num_params"):
        if recorded.get(key) is not None and recorded[key] != now[key]:
            raise BenchError(f"run {record.id} was tuned on {record.spec.backbone} with {key} {recorded[key]}, "
                             f"but its weights ({now['weights_source']}) now give {now[key]}; put the run's "
                             "weights back (bench run --weights names them in the spec)")


@dataclass(frozen=True)
class Rescored:
    """A run scored again. `recorded`: the accuracy its record holds for the split (None when it has none);
    `changed`: test predictions that differ from the saved ones (None without saved predictions); `recorded_on`,
    `scored_on`: the torch devices of the run and of this scoring; `spec`: the run's."""

    split: str
    accuracy: float
    recorded: float | None
    images: int
    changed: int | None
    recorded_on: str | None
    scored_on: str
    spec: RunSpec

    @property
    def tolerance(self) -> float:
        """One image's worth of accuracy. The same code, device and batch size give bitwise the same logits, so
        the same accuracy; another device or library version rounds differently in the last bits, which can flip
        an image whose two best logits nearly tie, so one image may differ. More than one means other parameters
        or other data."""
        return 100.0 / self.images

    @property
    def reproduced(self) -> bool:
        return self.recorded is None or abs(self.accuracy - self.recorded) <= self.tolerance + 1e-9


def runs_of_tasks(results: Path, tasks: list[str], split: str = "test") -> tuple[list[RunRecord], list[str]]:
    """The finished runs of `tasks` in `results` that `rescore` can score on `split`, in (task, method, seed) order,
    and a line per kind of run left out (counted): runs recorded before artifacts, runs that learned the whole
    backbone without `--save-full`, and on test the tune-stage runs."""
    from bench.store import Store

    wanted = set(tasks)
    scorable, left_out = [], Counter[str]()
    for record in Store(results).records():
        if not record.done or record.spec.task not in wanted:
            continue
        if record.artifacts is None:
            left_out["recorded before runs kept artifacts (bench run --retry-artifacts regenerates them)"] += 1
        elif LEARNED not in record.artifacts:
            left_out["learned the whole backbone, which a run keeps only with bench run --save-full"] += 1
        elif split == "test" and record.spec.stage == "tune":
            left_out["tune-stage runs, which never read test (--split val scores them)"] += 1
        else:
            scorable.append(record)
    scorable.sort(key=lambda r: (r.spec.task, r.spec.method, r.spec.backbone, r.spec.seed, r.id))
    return scorable, [f"{n} run(s) left out: {why}" for why, n in left_out.items()]


def rescore(results: Path, run_id: str, split: str = "test", data_root: Path | None = None,
            device: str = "cpu", warn: Callable[[str], None] = print, caches: Caches | None = None) -> Rescored:
    """Score run `run_id`'s saved parameters on `split` as the engine scored it (the run's pipeline, batch size
    and precision) and hold the result against its record. A damaged predictions file only costs the per-image
    comparison, with a line through `warn`. `caches`: the tasks and backbones already loaded, shared by the runs of
    one `bench eval`.

    Raises:
        BenchError: an unknown split, or the test split of a tune-stage run (the protocol never reads it).
    """
    if split not in SPLITS:
        raise BenchError(f"--split {split!r} is not valid; use test or val")
    model = load_run(results, run_id, device, caches)
    record = model.record
    spec = record.spec
    if split == "test" and spec.stage == "tune":
        raise BenchError(f"run {run_id} is a tune-stage run, which never reads test (the field's protocol); "
                         "use --split val")
    config = METHODS.get(spec.method).config_cls.from_overrides(spec.hparams)
    pipeline = Protocol.from_values(spec.protocol)
    tasks = caches.tasks if caches is not None else LoadedTasks()
    data = pipeline_data(tasks.get(TASKS.get(spec.task), data_root), pipeline)
    images = data.test if split == "test" else data.val
    dev = torch.device(device)
    scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    accuracy = _accuracy(model, images.batches(config.batch_size, device=dev), model.preprocess.to(dev), dev,
                         pipeline.precision, scored)
    changed = None
    if split == "test":
        try:
            saved = load_predictions(results, run_id)
            now = predictions_of(scored)
            changed = int((saved.predicted != now.predicted).sum()) if len(saved.labels) == len(now.labels) \
                else len(now.labels)
        except ArtifactError as exc:
            warn(str(exc))
    recorded = record.test_acc if split == "test" else record.val_acc
    recorded_on = record.provenance.torch_device if record.provenance is not None else None
    return Rescored(split, accuracy, recorded, len(images), changed, recorded_on, str(dev), spec)


def export_peft(results: Path, run_id: str, out: Path) -> list[Path]:
    """Write run `run_id`'s adapter in peft's `save_pretrained` layout into the new folder `out`
    (`adapter_config.json`, `adapter_model.safetensors`), with the classifier beside it (`head.safetensors`, its
    pooling in the metadata), so `PeftModel.from_pretrained(vit, out)` loads it on the run's backbone.

    Raises:
        BenchError: the run's method is not built on peft, or `out` exists and is not empty.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} exists and is not an empty folder; pass a new folder to export into")
    model = load_run(results, run_id)
    vit = next((m for m in model.trunk.modules() if isinstance(getattr(m, "peft_config", None), dict)), None)
    if vit is None:
        raise BenchError(f"run {run_id} is {model.record.spec.method}, which is not built on peft, so it has no peft "
                         "layout; --format peft exports lora, dora, loha, lokr, ia3 and ln-tuning runs (load others "
                         "with bench.load_run)")
    pooling = getattr(model.trunk, "pooling", None)
    with replacing(out, f"the peft export of run {run_id}", folder=True) as folder:
        folder.mkdir()
        vit.peft_config["default"].save_pretrained(str(folder))
        # peft names a PeftModel's tensors from its root; the adapter was injected into the bare ViT.
        state = {f"base_model.model.{k}": v.detach().cpu().contiguous()
                 for k, v in get_peft_model_state_dict(vit, adapter_name="default").items()}
        save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, folder / "head.safetensors", metadata={
            "run_id": run_id, "pooling": json.dumps(pooling), "backbone": model.record.spec.backbone})
    return sorted(out.iterdir())

