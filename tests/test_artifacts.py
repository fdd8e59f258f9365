"""Artifacts beside a run's record: the predictions file round-trips exactly, and a missing or changed file is one
line that says how to get it back."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from bench.artifacts import (
    PREDICTIONS, ArtifactError, Predictions, artifact_file, load_predictions, relative_path, run_folder,
    save_predictions,
)
from bench.config import RunSpec
from bench.record import RunRecord
from bench.store import Store
from records import make_record


def _predictions(classes: int, n: int = 40, seed: int = 0) -> tuple[Predictions, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)).astype(np.float32) * 3
    labels = rng.integers(classes, size=n)
    return Predictions.from_logits(logits, logits.argmax(axis=1), labels), logits


def _stored(tmp_path, predictions: Predictions) -> tuple[Store, RunRecord]:
    spec = RunSpec("vpt-deep", "digits", "micro-vit", 0, {"lr": 0.01})
    path = run_folder(tmp_path, spec.run_id) / f"{PREDICTIONS}.safetensors"
    sha = save_predictions(path, predictions, {"run_id": spec.run_id})
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    record = dataclasses.replace(make_record(spec, predictions.accuracy), artifacts={
        PREDICTIONS: artifact_file(spec.run_id, PREDICTIONS, sha, path.stat().st_size)})
    store = Store(tmp_path)
    store.write(record)
    return store, record


@pytest.mark.parametrize("classes", [10, 100])
def test_predictions_round_trip_exactly_with_every_logit_up_to_100_classes(tmp_path, classes):
    predictions, logits = _predictions(classes)
    _, record = _stored(tmp_path, predictions)
    loaded = load_predictions(tmp_path, record.id)
    for name, value in predictions.tensors().items():
        np.testing.assert_array_equal(getattr(loaded, name), value, err_msg=name)
        assert getattr(loaded, name).dtype == value.dtype
    assert loaded.top_classes is None and loaded.logits.shape == (40, classes)
    np.testing.assert_array_equal(loaded.logits, logits.astype(np.float16))
    # Confidence is the softmax of the full-precision logits (the oracle: scipy's softmax).
    from scipy.special import softmax
    expected = softmax(logits.astype(np.float64), axis=1)[np.arange(40), logits.argmax(axis=1)]
    np.testing.assert_allclose(loaded.confidence, expected, rtol=1e-6)
    np.testing.assert_array_equal(loaded.correct, logits.argmax(axis=1) == loaded.labels)
    assert loaded.accuracy == record.test_acc


def test_over_100_classes_predictions_keep_the_top_5_largest_first(tmp_path):
    predictions, logits = _predictions(200)
    _, record = _stored(tmp_path, predictions)
    loaded = load_predictions(tmp_path, record.id)
    assert loaded.logits is None and loaded.top_classes.shape == (40, 5) and loaded.top_logits.dtype == np.float16
    np.testing.assert_array_equal(loaded.top_classes[:, 0], loaded.predicted)
    expected = np.sort(logits, axis=1)[:, ::-1][:, :5]
    np.testing.assert_array_equal(loaded.top_logits, expected.astype(np.float16))


def test_metadata_is_in_the_safetensors_header(tmp_path):
    from safetensors import safe_open

    _, record = _stored(tmp_path, _predictions(10)[0])
    with safe_open(tmp_path / relative_path(record.id, PREDICTIONS), "np") as fh:
        assert fh.metadata() == {"run_id": record.id}


def _corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[:-7])


def _corrupt_flipped(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, says", [(_corrupt_truncated, "corrupt"), (_corrupt_flipped, "corrupt"),
                                          (lambda path: path.unlink(), "missing")])
def test_a_damaged_predictions_file_is_one_line_that_says_how_to_regenerate_it(tmp_path, damage, says):
    _, record = _stored(tmp_path, _predictions(10)[0])
    damage(tmp_path / relative_path(record.id, PREDICTIONS))
    with pytest.raises(ArtifactError, match=says) as error:
        load_predictions(tmp_path, record.id)
    message = str(error.value)
    assert "\n" not in message and record.id in message and "--retry-artifacts" in message


def test_a_record_from_before_artifacts_says_it_has_none(tmp_path):
    spec = RunSpec("linear", "digits", "micro-vit", 0, {})
    Store(tmp_path).write(make_record(spec, 50.0))
    with pytest.raises(ArtifactError, match="recorded before runs kept artifacts"):
        load_predictions(tmp_path, spec.run_id)
    with pytest.raises(ArtifactError, match="no record"):
        load_predictions(tmp_path, "0" * 12)


def test_the_artifacts_section_round_trips_and_old_records_omit_it(tmp_path):
    store, record = _stored(tmp_path, _predictions(10)[0])
    stored = json.loads(store.path(record.id).read_text())
    assert set(stored["artifacts"][PREDICTIONS]) == {"path", "sha256", "bytes"}
    assert store.read(record.id) == record
    assert "artifacts" not in make_record(record.spec, 50.0).to_dict()
