"""The run record: the one contract between the halves of the harness.

The engine returns a `RunRecord`, the store writes and reads it as JSON, and the report reads its fields through the
flat row it gives (`RunRecord.row`), whose column names come from this schema (`COLUMNS`). Each field's meaning is
written beside it (`doc=`); `docs/records.md` is generated from it (`schema_markdown`), so the two never disagree.

Layout history: version 1 (records with no `schema_version` key) has the same layout as version 2, which only adds
the key; version 1 records load as they are, and serialise back with `schema_version` 2 and nothing else changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

from bench import BenchError
from bench.config import RunSpec

SCHEMA_VERSION = 2
STATUSES = ("done", "failed")

S = TypeVar("S", bound="_Section")


def _doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (read by `schema_markdown`)."""
    return field(metadata={"doc": text}, **kwargs)


class RecordError(ValueError):
    """A JSON object that is not a run record; the message names what is missing or wrong."""


@dataclass(frozen=True)
class _Section:
    """A part of a record that serialises as one flat JSON object of its fields."""

    @classmethod
    def from_dict(cls: type[S], data: Any, name: str) -> S:
        if not isinstance(data, dict):
            raise RecordError(f"{name} is not an object")
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Metrics(_Section):
    val_acc: float | None = _doc("last epoch's validation accuracy (%); null in the final stage, which trains on "
                                 "train+val")
    test_acc: float | None = _doc("test accuracy (%) after the last epoch; null in the tune stage, which never reads "
                                  "test")


@dataclass(frozen=True)
class ParamCounts(_Section):
    backbone: int = _doc("parameters of the backbone as loaded, before the method adapts it")
    learnable: int = _doc("parameters that receive gradients, head included")
    learnable_without_head: int = _doc("`learnable` less the classifier head")
    head: int = _doc("learnable parameters of the classifier head")
    learnable_pct: float = _doc("`learnable` as % of `backbone`")
    learnable_without_head_pct: float = _doc("`learnable_without_head` as % of `backbone`")

    @property
    def whole_backbone(self) -> bool:
        """The run learned every backbone parameter (full fine-tuning): its learned tensors are a whole backbone."""
        return self.learnable_without_head >= self.backbone


@dataclass(frozen=True)
class WallClock(_Section):
    prompt_construction: float = _doc("seconds the method spent building its start (SPT's prompt construction, "
                                      "k-means included)")
    feature_cache: float = _doc("seconds extracting (or loading) a frozen trunk's train/val features")
    train: float = _doc("seconds in training epochs")
    eval: float = _doc("seconds scoring val after each epoch, plus the final test pass")
    probe: float = _doc("seconds in the method's probe measurements (NMI)")


@dataclass(frozen=True)
class CpuShare(_Section):
    build: float | None = _doc("CPU seconds per wall-clock second per torch thread while building; near 1 when "
                               "the run had its cores; null on CUDA")
    train: float | None = _doc("the same while training")


@dataclass(frozen=True)
class Throughput(_Section):
    train_images_per_s: float | None = _doc("training images per second (epochs × train images / train seconds)")
    test_images_per_s: float | None = _doc("images per second of the no-grad test pass, preprocessing included")


@dataclass(frozen=True)
class Memory(_Section):
    kind: str = _doc("`cuda_max_allocated` (the run's GPU peak) or `process_peak_rss` (the process's peak, an "
                     "upper bound for the run)")
    mb: float = _doc("the peak, in MiB")


@dataclass(frozen=True)
class Provenance(_Section):
    versions: dict[str, str | None] = _doc("versions of bench, torch, timm, numpy and python")
    git_commit: str | None = _doc("HEAD of the checkout the code was imported from, `+dirty` when tracked files "
                                  "differed")
    torch_device: str = _doc("the torch device the run used")
    device: str = _doc("the device's name (GPU model, or the CPU)")
    torch_threads: int = _doc("torch's intra-op threads")
    precision: str = _doc("`fp32` or `bf16 autocast`")
    timm_name: str = _doc("the timm model the weights belong to")
    transform: dict[str, Any] = _doc("exactly what was done to a uint8 image before the backbone: resize, scale, "
                                     "mean, std")


@dataclass(frozen=True)
class ArtifactFile(_Section):
    path: str = _doc("the file, relative to the results folder: `artifacts/<id>/<name>.safetensors`")
    sha256: str = _doc("sha256 of the file's bytes; a file that no longer matches is reported as corrupt")
    bytes: int = _doc("the file's size on disk")


@dataclass(frozen=True)
class TaskInfo:
    """The task as the run saw it: its registry facts and what its loader reported (serialised flat)."""

    name: str = _doc("registered task name")
    group: str = _doc("the task's group (`vtab/natural`, `fgvc`, `micro/real`, ...); the report's columns")
    num_classes: int = _doc("classes of the head")
    data: dict[str, Any] = _doc("what the loader reported, flat beside the fields above: source, layout, the data's "
                                "`fingerprint` (`bench/fingerprint.py`; absent in older records), split sizes and "
                                "seed, ... (task-family specific)", default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, name: str) -> "TaskInfo":
        if not isinstance(data, dict):
            raise RecordError(f"{name} is not an object")
        known = {"name", "group", "num_classes"}
        return cls(data.get("name"), data.get("group"), data.get("num_classes"),
                   {k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "num_classes": self.num_classes, **self.data}


@dataclass(frozen=True)
class RunRecord:
    """One run: what ran (`spec`), how it ended (`status`) and, when done, everything it measured.

    A finished run has every field but `error` and `traceback`; a failed one only `id`, `spec`, `status`, `error` and
    `traceback` (`RunRecord.failed`).
    """

    id: str = _doc("the run's stable id: a hash of `spec` (`RunSpec.run_id`); names the record's file")
    spec: RunSpec = _doc("what ran: method, task, backbone, seed, resolved hyper-parameters (`hparams`), weights, "
                         "stage (`fixed`, `tune`, `final`) and recipe")
    status: str = _doc("`done` or `failed`")
    schema_version: int = _doc("the layout of this record (see `bench/record.py`)", default=SCHEMA_VERSION)
    recipe: dict[str, Any] | None = _doc("the named recipe the hyper-parameters were resolved from, with every value "
                                         "and its source; null when none", default=None)
    protocol: dict[str, Any] | None = _doc("every pipeline value the run used (`bench.protocol.Protocol`): "
                                           "normalisation, image pipelines, head init, drop_last, precision, "
                                           "prompt images; absent in records older than this field", default=None)
    task: TaskInfo | None = _doc("the task as the run saw it", default=None)
    backbone: dict[str, Any] | None = _doc("the backbone: name, timm architecture, objective, weights `variant` "
                                           "(absent in older records), pooling, input size, mean/std, weights source "
                                           "and checkpoint sha256", default=None)
    method_info: dict[str, Any] | None = _doc("what the method reports of its adaptation (prompted blocks, init, "
                                              "LoRA targets, ...)", default=None)
    curves: dict[str, list[Any]] | None = _doc("per-epoch curves: `train_loss`, `val_acc` and the method's probe "
                                               "curves (SPT/VPT: `nmi`, per layer, at init and after every epoch)",
                                               default=None)
    metrics: Metrics | None = _doc("final accuracies", default=None)
    params: ParamCounts | None = _doc("parameter counts", default=None)
    extra_tokens: int | None = _doc("tokens the method adds to the sequence (prompts)", default=None)
    wallclock: WallClock | None = _doc("wall-clock seconds per phase", default=None)
    cpu_share: CpuShare | None = _doc("whether the run had its cores (absent in records older than this field)",
                                      default=None)
    throughput: Throughput | None = _doc("images per second", default=None)
    memory: Memory | None = _doc("peak memory", default=None)
    data_path: list[dict[str, Any]] | None = _doc("which decode-cache entries the splits read or built (with the "
                                                  "first pass's cost), or why they read files", default=None)
    provenance: Provenance | None = _doc("the code, libraries and device the run ran on", default=None)
    artifacts: dict[str, ArtifactFile] | None = _doc(
        "the files the run left beside its record (`bench/artifacts.py`), by name: `learned` (the learnable tensors "
        "and the head; full fine-tuning only with `--save-full`), `init` (tensors a method constructed from the data "
        "before training: SPT's prompts), `predictions` (per test image: label, prediction, confidence, logits or "
        "top-5); absent in records older than this field", default=None)
    hparams_from: dict[str, Any] | None = _doc("final-stage runs: where the hyper-parameters came from: `from` "
                                               "(`stage 1`, or `tuned file` for `bench run --from-tuned`), the "
                                               "stage-1 `run` picked and its `val_acc`, and the `file`; absent "
                                               "otherwise and in older records", default=None)
    error: str | None = _doc("failed runs: the error, one line", default=None)
    traceback: str | None = _doc("failed runs: the last frames of the traceback", default=None)

    # Fields a version-1 record may lack, written back only when present.
    _OMITTED_WHEN_NULL: ClassVar[frozenset[str]] = frozenset({"cpu_share", "protocol", "artifacts", "hparams_from"})
    _FAILED_FIELDS: ClassVar[tuple[str, ...]] = ("id", "spec", "status", "schema_version", "error", "traceback")

    @classmethod
    def failed(cls, spec: RunSpec, error: str, traceback: str = "") -> "RunRecord":
        return cls(id=spec.run_id, spec=spec, status="failed", error=error, traceback=traceback)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def test_acc(self) -> float | None:
        return self.metrics.test_acc if self.metrics is not None else None

    @property
    def val_acc(self) -> float | None:
        return self.metrics.val_acc if self.metrics is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the store writes."""
        names = self._FAILED_FIELDS if self.status == "failed" else \
            [f.name for f in fields(self) if f.name not in ("error", "traceback")]
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if value is None and name in self._OMITTED_WHEN_NULL:
                continue
            if name == "artifacts" and value is not None:
                value = {key: file.to_dict() for key, file in value.items()}
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "RunRecord":
        """Parse a stored record; raises `RecordError` naming what is missing when `data` is not one."""
        if not isinstance(data, dict):
            raise RecordError("no id, status, spec")
        kinds = {"id": str, "status": str, "spec": dict}
        wrong = [key for key, kind in kinds.items() if not isinstance(data.get(key), kind)]
        if not wrong and data["status"] == "done" and not isinstance(data.get("metrics"), dict):
            wrong = ["metrics"]  # a finished run is selected and reported by its metrics
        if wrong:
            raise RecordError(f"no {', '.join(wrong)}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version < 1:
            raise RecordError(f"schema_version {version!r}, not a positive integer")
        if version > SCHEMA_VERSION:
            # Not corrupt: a newer bench wrote it. Setting it aside would hide a good record from that bench.
            raise BenchError(f"record {data['id']} has schema_version {version}, newer than this bench's "
                             f"{SCHEMA_VERSION}; upgrade bench (pip install -U) to read it")
        try:
            spec = RunSpec(**data["spec"])
        except TypeError as exc:
            raise RecordError(f"a spec that is not a RunSpec ({exc})") from None

        def section(name: str, kind: Any) -> Any:
            value = data.get(name)
            return None if value is None else kind.from_dict(value, name)

        artifacts = data.get("artifacts")
        if artifacts is not None and not isinstance(artifacts, dict):
            raise RecordError("artifacts is not an object")
        return cls(
            id=data["id"], spec=spec, status=data["status"], schema_version=SCHEMA_VERSION,
            recipe=data.get("recipe"), protocol=data.get("protocol"), task=section("task", TaskInfo), backbone=data.get("backbone"),
            method_info=data.get("method_info"), curves=data.get("curves"), metrics=section("metrics", Metrics),
            params=section("params", ParamCounts), extra_tokens=data.get("extra_tokens"),
            wallclock=section("wallclock", WallClock), cpu_share=section("cpu_share", CpuShare),
            throughput=section("throughput", Throughput), memory=section("memory", Memory),
            data_path=data.get("data_path"), provenance=section("provenance", Provenance),
            artifacts=None if artifacts is None else {key: ArtifactFile.from_dict(file, f"artifacts.{key}")
                                                      for key, file in artifacts.items()},
            hparams_from=data.get("hparams_from"),
            error=data.get("error"), traceback=data.get("traceback"),
        )

    def row(self) -> dict[str, Any]:
        """The record as one flat row of `Store.load`'s DataFrame; column names are `COLUMNS`'s."""
        spec = self.spec
        row: dict[str, Any] = {"id": self.id, "status": self.status, "method": spec.method, "task": spec.task,
                               "backbone": spec.backbone, "seed": spec.seed, "weights": spec.weights,
                               "stage": spec.stage}
        row.update({hp_column(k): v for k, v in spec.hparams.items()})
        for name in ROW_SECTIONS:
            section = getattr(self, name)
            if section is not None:
                row.update({_column(name, k): v for k, v in section.to_dict().items()})
        if self.task is not None:
            row["group"] = self.task.group
        if self.error is not None:
            row["error"] = self.error
        return row


# The sections flattened into `RunRecord.row`; metrics are the table's headline, so their columns carry no prefix.
ROW_SECTIONS = ("metrics", "params", "wallclock", "cpu_share", "throughput")
_SECTION_TYPES: dict[str, type[_Section]] = {"metrics": Metrics, "params": ParamCounts, "wallclock": WallClock,
                                             "cpu_share": CpuShare, "throughput": Throughput}


def _column(section: str, name: str) -> str:
    return name if section == "metrics" else f"{section}.{name}"


def hp_column(name: str) -> str:
    """The column of hyper-parameter `name` (`hp.lr`)."""
    return f"hp.{name}"


def _columns() -> SimpleNamespace:
    sections = {section: SimpleNamespace(**{f.name: _column(section, f.name) for f in fields(kind)})
                for section, kind in _SECTION_TYPES.items()}
    spec = {name: name for name in ("id", "status", "method", "task", "backbone", "seed", "weights", "stage")}
    return SimpleNamespace(**spec, **sections, group="group", error="error")


# Column names of `RunRecord.row`, from the schema: `COLUMNS.params.learnable_pct` is "params.learnable_pct" and
# `COLUMNS.metrics.test_acc` is "test_acc"; a misspelt field fails where it is read, not as a silently empty column.
COLUMNS = _columns()


# The line of `docs/records.md` below which the page is `schema_markdown()`.
FIELDS_MARKER = "<!-- fields: generated below -->"


def schema_markdown() -> str:
    """The field tables of `docs/records.md`: one per part of the record."""
    parts: list[tuple[str, type]] = [("RunRecord", RunRecord), ("task", TaskInfo),
                                     *[(name, kind) for name, kind in _SECTION_TYPES.items()],
                                     ("memory", Memory), ("provenance", Provenance),
                                     ("artifacts.<name>", ArtifactFile)]
    lines = [f"Schema version {SCHEMA_VERSION}. Generated from `bench/record.py` by `bench.record.schema_markdown()`;",
             "a test keeps this page equal to it.", ""]
    for title, kind in parts:
        lines += [f"### `{title}`", "", "| field | type | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(kind):
            kind_text = str(f.type).replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{kind_text}` | {f.metadata.get('doc', '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    # `python -m bench.record docs/records.md`: rewrite the page's generated part, below its marker line.
    import sys
    from pathlib import Path

    page = Path(sys.argv[1])
    prose, marker, _ = page.read_text().partition(FIELDS_MARKER)
    if not marker:
        sys.exit(f"{page} has no line {FIELDS_MARKER!r}; add it where the generated field tables should start")
    page.write_text(prose + marker + "\n\n" + schema_markdown())
