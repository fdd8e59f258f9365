"""What a run keeps beside its record: files under `results/artifacts/<run id>/`, each named in the record's
`artifacts` section with its sha256 and size, so a file that changed since (truncated, a flipped byte) is found
before it is used.

  learned.safetensors      the tensors the run learned: exactly its learnable parameters, plus the head's whole state
                           (a probe's BatchNorm statistics included); with the method, its config and the backbone's
                           identity in the header's metadata. Full fine-tuning writes it only with `--save-full`.
  init.safetensors         tensors the method constructed from the data before training (SPT's prompts), as built.
  predictions.safetensors  per test image, in the test split's order: label, predicted class, its softmax
                           probability, and the logits (float16), or with more than `MAX_CLASSES` classes the top
                           `TOP_K` classes and their logits. Enough for per-image correctness, calibration and
                           ensembles of any runs that scored the same test split.

Files are safetensors (no pickle; a header of JSON, then raw tensors) written whole or not at all
(`bench.atomic.replacing`). A missing or corrupt artifact is an `ArtifactError`: one line naming the run, the file,
what is wrong and how to get it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from safetensors.torch import load as load_torch
from safetensors.torch import save as save_torch

from bench import BenchError
from bench.atomic import replacing
from bench.record import ArtifactFile, RunRecord

FOLDER = "artifacts"
LEARNED, INIT, PREDICTIONS = "learned", "init", "predictions"
# Logits of every class up to this many classes (VTAB's 100 at most, CUB's 200 above); above it, the top k.
MAX_CLASSES = 100
TOP_K = 5
REGENERATE = "regenerate it with `bench run --retry-artifacts` (with the run's arguments) or rerun the run"


class ArtifactError(BenchError):
    """An artifact a command needs is missing, corrupt, or not what its record says; the message is one line."""


def run_folder(results: Path, run_id: str) -> Path:
    return Path(results) / FOLDER / run_id


def relative_path(run_id: str, name: str) -> str:
    """Where artifact `name` of a run lives, relative to the results folder (what the record holds)."""
    return f"{FOLDER}/{run_id}/{name}.safetensors"


@dataclass(frozen=True)
class Predictions:
    """A run's test predictions, one row per test image in the split's order.

    Attributes:
        labels: (N,) int64 true classes.
        predicted: (N,) int64 argmax classes, exactly those the run's test accuracy counted.
        confidence: (N,) float32 softmax probability of `predicted` (from the full-precision logits).
        logits: (N, C) float16 with C <= `MAX_CLASSES`, else None.
        top_classes: (N, k) int64 classes of the k largest logits, largest first, with C > `MAX_CLASSES`, else None.
        top_logits: (N, k) float16 their logits, likewise.
    """

    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    logits: np.ndarray | None = None
    top_classes: np.ndarray | None = None
    top_logits: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: whether each test image was classified correctly."""
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        """Test accuracy in %, computed as the engine computes it."""
        return 100.0 * int(self.correct.sum()) / len(self.labels)

    @classmethod
    def from_logits(cls, logits: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> Predictions:
        """From a run's full-precision (N, C) logits, the classes its accuracy counted, and the labels."""
        logits = logits.astype(np.float32)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        predicted = predicted.astype(np.int64)
        confidence = (shifted[np.arange(len(predicted)), predicted] / shifted.sum(axis=1)).astype(np.float32)
        if logits.shape[1] <= MAX_CLASSES:
            return cls(labels.astype(np.int64), predicted, confidence, logits=logits.astype(np.float16))
        top = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
        return cls(labels.astype(np.int64), predicted, confidence, top_classes=top.astype(np.int64),
                   top_logits=np.take_along_axis(logits, top, axis=1).astype(np.float16))

    def tensors(self) -> dict[str, np.ndarray]:
        named = {"labels": self.labels, "predicted": self.predicted, "confidence": self.confidence,
                 "logits": self.logits, "top_classes": self.top_classes, "top_logits": self.top_logits}
        return {name: np.ascontiguousarray(value) for name, value in named.items() if value is not None}


_DTYPES = {"labels": np.int64, "predicted": np.int64, "confidence": np.float32, "logits": np.float16,
           "top_classes": np.int64, "top_logits": np.float16}


def save_predictions(path: Path, predictions: Predictions, metadata: dict[str, str]) -> str:
    """Write `predictions` to `path` (safetensors, `metadata` in its header) atomically; returns the file's sha256."""
    tensors = predictions.tensors()
    n = len(predictions.labels)
    for name, value in tensors.items():
        if value.dtype != _DTYPES[name] or len(value) != n:
            raise ValueError(f"predictions.{name}: {value.dtype} of {len(value)} rows, expected {_DTYPES[name]} "
                             f"of {n}")
    return write_bytes(path, canonical(save_numpy(tensors, metadata)), "the predictions")[0]


def canonical(data: bytes) -> bytes:
    """Safetensors bytes with the header's keys in sorted order. safetensors writes the metadata in a hash map's
    order, which changes from process to process; sorted, the same tensors and metadata give the same bytes, so
    the same run gives the same sha256 wherever it executes."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + length]), separators=(",", ":"), sort_keys=True,
                        ensure_ascii=False).encode()
    if len(header) > length:  # not the compact JSON safetensors writes: leave it as it is
        return data
    # safetensors pads its header with spaces to the tensors' alignment; the same length keeps the data offsets.
    return data[:8] + header.ljust(length, b" ") + data[8 + length:]


def write_bytes(path: Path, data: bytes, what: str) -> tuple[str, int]:
    """Write `data` to `path` whole or not at all; returns its sha256 and size."""
    with replacing(path, what) as temporary, open(temporary, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return hashlib.sha256(data).hexdigest(), len(data)


def artifact_file(run_id: str, name: str, sha256: str, size: int) -> ArtifactFile:
    return ArtifactFile(relative_path(run_id, name), sha256, size)


def read_artifact(results: Path, record: RunRecord, name: str, why_absent: str = "") -> tuple[bytes, dict[str, str]]:
    """The bytes of artifact `name` of `record`'s run and its header's metadata, checked against the record.

    Raises:
        ArtifactError: the record names no such artifact (`why_absent` says why, when known), the file is missing,
            its sha256 differs from the record's, or it is not a safetensors file.
    """
    run = f"run {record.id}"
    if record.artifacts is None:
        raise ArtifactError(f"{run} was recorded before runs kept artifacts, so it has no {name}.safetensors; "
                            f"{REGENERATE}")
    entry = record.artifacts.get(name)
    if entry is None:
        raise ArtifactError(f"{run} has no {name}.safetensors{why_absent or ''}; {REGENERATE}")
    path = Path(results) / entry.path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{run}: {path} is missing; {REGENERATE}") from None
    except OSError as exc:
        raise ArtifactError(f"{run}: cannot read {path} ({exc.strerror}); {REGENERATE}") from None
    if len(data) != entry.bytes or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ArtifactError(f"{run}: {path} is corrupt ({len(data)} bytes, sha256 not the recorded one); "
                            f"{REGENERATE}")
    try:
        return data, header_metadata(data)
    except ValueError as exc:
        raise ArtifactError(f"{run}: {path} is not a safetensors file ({exc}); {REGENERATE}") from None


def header_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's bytes: an 8-byte little-endian header length, then JSON."""
    if len(data) < 8:
        raise ValueError("shorter than its header")
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + length])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("its header is not JSON") from None
    return header.get("__metadata__") or {}


def read_record(results: Path, run_id: str) -> RunRecord:
    """The finished run's record; `ArtifactError` when there is none."""
    from bench.store import Store

    record = Store(results).read(run_id)
    if record is None:
        raise ArtifactError(f"run {run_id}: no record in {Path(results) / 'runs'}; check the id "
                            "(`bench run --dry-run` lists ids) and --results")
    if not record.done:
        raise ArtifactError(f"run {run_id} failed ({record.error}), so it has no artifacts; rerun it with "
                            "`bench run --retry-failed`")
    return record


def load_predictions(results: Path, run_id: str) -> Predictions:
    """Run `run_id`'s test predictions from `results`.

    Raises:
        ArtifactError: no record, a tune-stage run (it never reads test), or the file missing, corrupt, or not
            what the record names.
    """
    record = read_record(results, run_id)
    if record.spec.stage == "tune":
        raise ArtifactError(f"run {run_id} is a tune-stage run, which never reads test, so it has no predictions; "
                            "use the final stage's runs")
    data, _ = read_artifact(results, record, PREDICTIONS)
    try:
        tensors = load_numpy(data)
    except SafetensorError as exc:
        tensors, problem = {}, str(exc)
    else:
        problem = "no labels, predicted or confidence"
    if not {"labels", "predicted", "confidence"} <= set(tensors):
        raise ArtifactError(f"run {run_id}: {Path(results) / relative_path(run_id, PREDICTIONS)} does not hold "
                            f"predictions ({problem}); {REGENERATE}")
    return Predictions(**{name: tensors.get(name) for name in _DTYPES})


# What of the record's backbone names the weights a run's frozen parameters came from.
BACKBONE_IDENTITY = ("name", "timm_arch", "variant", "objective", "weights_source", "checkpoint_sha256", "num_params")


def metadata(record: RunRecord) -> dict[str, str]:
    """The header every artifact of `record`'s run carries: which run, method, config and backbone it belongs to."""
    spec = record.spec
    backbone = {key: (record.backbone or {}).get(key) for key in BACKBONE_IDENTITY}
    return {"run_id": record.id, "method": spec.method, "task": spec.task, "stage": spec.stage,
            "config": json.dumps(spec.hparams, sort_keys=True), "protocol": json.dumps(spec.protocol, sort_keys=True),
            "backbone": json.dumps(backbone, sort_keys=True), "weights": spec.weights or ""}


def keep(results: Path, record: RunRecord, learned: dict[str, torch.Tensor], initial: dict[str, torch.Tensor],
         predictions: Predictions | None, whole_backbone: bool, save_full: bool = False) -> RunRecord:
    """Write a finished run's artifacts under `results/artifacts/<id>/` and return its record naming them.

    `learned` is written unless it is a whole backbone (`whole_backbone`) and `save_full` is not set; `initial` when
    the method constructed anything; `predictions` when the run read test. Files of an earlier run of the same id
    that this one does not write are removed, so the folder holds what the record names.
    """
    header = metadata(record)
    folder = run_folder(results, record.id)
    files: dict[str, ArtifactFile] = {}

    def put(name: str, data: bytes) -> None:
        sha, size = write_bytes(folder / f"{name}.safetensors", data, f"the {name} artifact of run {record.id}")
        files[name] = artifact_file(record.id, name, sha, size)

    if learned and (save_full or not whole_backbone):
        put(LEARNED, canonical(save_torch(learned, header)))
    if initial:
        put(INIT, canonical(save_torch(initial, header)))
    if predictions is not None:
        path = folder / f"{PREDICTIONS}.safetensors"
        files[PREDICTIONS] = artifact_file(record.id, PREDICTIONS, save_predictions(path, predictions, header),
                                           path.stat().st_size)
    for stale in folder.glob("*.safetensors") if folder.is_dir() else []:
        if stale.stem not in files:
            stale.unlink()
    return dataclasses.replace(record, artifacts=files)


def load_tensors(results: Path, record: RunRecord, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Artifact `name` of `record`'s run as tensors (on the CPU), with its header's metadata; checked as
    `read_artifact` checks."""
    why = ""
    if name == LEARNED and record.params is not None and record.params.whole_backbone:
        why = " (it learned the whole backbone, which a run keeps only with `bench run --save-full`)"
    data, header = read_artifact(results, record, name, why)
    try:
        return load_torch(data), header
    except SafetensorError as exc:
        raise ArtifactError(f"run {record.id}: {Path(results) / relative_path(record.id, name)} does not hold "
                            f"tensors ({exc}); {REGENERATE}") from None


def missing(results: Path, record: RunRecord, hash_files: bool = True) -> str | None:
    """Why a finished run's artifacts need regenerating (`bench run --retry-artifacts`), or None when every file its
    record names is there, whole. Without `hash_files`, only sizes are checked: a dry run lists a whole store, and
    hashing every file of it (a full fine-tuning run's backbone among them) would take minutes."""
    if record.artifacts is None:
        return "recorded before runs kept artifacts"
    for name, entry in record.artifacts.items():
        path = Path(results) / entry.path
        try:
            if not path.is_file():
                return f"{name} missing"
            if path.stat().st_size != entry.bytes or (hash_files and sha256_file(path) != entry.sha256):
                return f"{name} corrupt"
        except OSError as exc:
            return f"{name} unreadable ({exc.strerror})"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def disk_bytes(record: RunRecord) -> int:
    """Bytes the run's artifacts take on disk, as its record names them."""
    return sum(entry.bytes for entry in (record.artifacts or {}).values())


def human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    return f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.1f} MiB"
