"""The cost model (issue 32): the work it counts against what the engine processes, its arithmetic, its refusal to
guess, the dry run's estimate and `--budget`; and the reusable tuning picks (`--export-tuned` / `--from-tuned`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from bench import BenchError, engine
from bench.cli import main
from bench.config import RunSpec
from bench.cost import (
    CALIBRATION, CostModel, Observation, SplitSizes, base_tokens, build_reads, check_records, method_shape, observe,
    representatives, work_of, write_calibration,
)
from bench.data import TASKS, TensorSplit
from bench.recipes import NONE, make_spec
from bench.scheduler import RunRequest, plan_run
from bench.store import Store
from data_fixtures import vtab_noah

RESULTS = Path(__file__).parents[1] / "results"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _spec(method: str, task: str, backbone: str, stage: str = "fixed", **hparams) -> RunSpec:
    return make_spec(method, task, backbone, 0, hparams, recipe=NONE, stage=stage)


# --------------------------------------------------------------------------------------------------------------------
# What a run processes


@pytest.mark.parametrize("method, kind, extra", [
    ("linear", "frozen", 0), ("pixels", "frozen", 0), ("vpt-deep", "prompts", 7), ("spt-shallow", "prompts", 7),
    ("lora", "adapters", 0), ("ssf", "adapters", 0), ("bitfit", "adapters", 0), ("full", "full", 0),
])
def test_a_methods_kind_and_extra_tokens_are_what_its_builder_returns(method, kind, extra):
    hparams = {"num_prompts": 7} if kind == "prompts" else {}
    shape = method_shape(_spec(method, "digits", "micro-mae", **hparams))
    assert (shape.kind, shape.extra_tokens, shape.probes) == (kind, extra, kind == "prompts")


def test_calibration_measures_one_method_of_every_kind():
    chosen = representatives()
    assert set(chosen) == {"frozen", "prompts", "adapters", "full"}
    assert all(method_shape(_spec(m, "digits", "micro-mae")).kind == k for k, m in chosen.items())


def test_the_images_a_build_reads_are_the_prompt_constructions_draws():
    assert build_reads(_spec("spt-deep", "digits", "micro-mae"), 400) == 400
    assert build_reads(_spec("spt-deep", "digits", "micro-mae", init_images=9), 400) == 9
    assert build_reads(_spec("spt-deep", "digits", "micro-mae", init="random"), 400) == 0
    assert build_reads(_spec("vpt-deep", "digits", "micro-mae"), 400) == 0


class _Counter:
    """Counts the images the engine's passes process, by wrapping them (the oracle for `work_of`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = {"train": 0, "eval": 0, "features": 0, "reads": 0}
        train_epoch, accuracy, features = engine.train_epoch, engine._accuracy, engine._features
        reads = TensorSplit.image_batches

        def counted(name, batches):
            for inputs, labels in batches:
                self.images[name] += len(labels)
                yield inputs, labels

        monkeypatch.setattr(engine, "train_epoch", lambda model, batches, *a, **k: train_epoch(
            model, counted("train", batches), *a, **k))
        monkeypatch.setattr(engine, "_accuracy", lambda model, batches, *a, **k: accuracy(
            model, counted("eval", batches), *a, **k))

        def feature_pass(trunk, split, *a, **k):
            out = features(trunk, split, *a, **k)
            self.images["features"] += len(out[1])
            return out

        monkeypatch.setattr(engine, "_features", feature_pass)

        def image_batches(split, index, *a, **k):
            self.images["reads"] += len(index)
            return reads(split, index, *a, **k)

        monkeypatch.setattr(TensorSplit, "image_batches", image_batches)


@pytest.mark.parametrize("method, stage, hparams", [
    ("vpt-deep", "fixed", {"epochs": 2, "batch_size": 20}),
    ("spt-deep", "tune", {"epochs": 1, "batch_size": 32, "num_prompts": 2}),
    ("linear", "final", {"epochs": 3, "batch_size": 10}),
    ("linear", "tune", {"epochs": 2, "batch_size": 32}),
])
def test_the_work_counted_is_what_the_engine_processes(tiny_registered, monkeypatch, method, stage, hparams):
    backbone, task = tiny_registered
    spec = make_spec(method, task, backbone, 0, hparams, recipe=NONE, stage=stage)
    data = TASKS.get(task).load()
    work = work_of(spec, SplitSizes(len(data.train), len(data.val), len(data.test)))
    counter = _Counter(monkeypatch)
    engine.run(spec)
    assert work.images["train"] == counter.images["train"]
    frozen = work.kind == "frozen"
    # A frozen trunk's val passes and training run on its features; its test pass and feature pass on images.
    assert work.images["val"] + work.images["test"] == counter.images["eval"]
    assert work.images["setup"] == (counter.images["features"] if frozen else counter.images["reads"])


def test_drop_last_leaves_the_partial_batch_out_of_the_count():
    sizes = SplitSizes(100, 20, 50)
    kept = work_of(_spec("vpt-deep", "digits", "micro-mae", epochs=2, batch_size=32), sizes)
    dropped = work_of(make_spec("vpt-deep", "digits", "micro-mae", 0, {"epochs": 2, "batch_size": 32,
                                                                      "drop_last": True}, recipe=NONE), sizes)
    assert (kept.images["train"], dropped.images["train"]) == (200, 2 * 96)


# --------------------------------------------------------------------------------------------------------------------
# The prediction


def _obs(method: str, kind: str, extra: int, seconds: dict[str, float], batch: int = 32, threads: int = 1,
         device: str = "dev", source: str = "s") -> Observation:
    return Observation(method, kind, "micro-mae", device, threads, batch, extra, seconds, source)


def test_a_prediction_sums_images_times_seconds_per_image_scaled_to_the_runs_tokens():
    base = base_tokens("micro-mae")
    assert base == 65  # 32 px / patch 4 = 64 patches, and the class token
    spec = _spec("vpt-deep", "digits", "micro-mae", epochs=2, num_prompts=10, batch_size=50)
    work = work_of(spec, SplitSizes(100, 20, 50))
    observations = [
        _obs("spt-deep", "prompts", 20, {"train": 0.5, "val": 0.1, "test": 0.2, "probe": 3.0}, source="a"),
        _obs("spt-deep", "prompts", 20, {"train": 0.7, "val": 0.1, "test": 0.2, "probe": 5.0}, source="b"),
        _obs("linear", "frozen", 0, {"train": 9.0, "test": 9.0}, source="c"),
        _obs("vpt-deep", "prompts", 20, {"train": 9.0}, device="another", source="d"),
    ]
    model = CostModel(observations, "dev", 1, {"micro-mae": base})
    prediction = model.predict(work)
    scale = (base + 10) / (base + 20)
    expected = (200 * 0.6 + 40 * 0.1 + 50 * 0.2) * scale + 3 * 4.0
    assert prediction.seconds == pytest.approx(expected)
    assert set(prediction.sources) == {"a", "b"}


def test_the_same_method_and_batch_are_preferred_within_a_family():
    work = work_of(_spec("vpt-deep", "digits", "micro-mae", epochs=1, batch_size=32), SplitSizes(64, 0, 0))
    observations = [_obs("spt-deep", "prompts", 20, {"train": 1.0, "probe": 1.0}, source="other method"),
                    _obs("vpt-deep", "prompts", 20, {"train": 2.0, "probe": 1.0}, batch=8, source="other batch"),
                    _obs("vpt-deep", "prompts", 20, {"train": 3.0, "probe": 1.0}, source="same")]
    prediction = CostModel(observations, "dev", 1, {"micro-mae": 65}).predict(work)
    # One epoch: 64 training images, and the probe at init and after the epoch.
    assert prediction.sources == ("same",) and prediction.seconds == pytest.approx(64 * 3.0 + 2 * 1.0)


def test_a_family_never_measured_has_no_basis_instead_of_a_guess():
    work = work_of(_spec("full", "digits", "micro-mae", epochs=1), SplitSizes(64, 8, 8))
    model = CostModel([_obs("vpt-deep", "prompts", 20, {"train": 1.0, "val": 1.0, "test": 1.0})], "dev", 1, {})
    prediction = model.predict(work)
    assert prediction.seconds is None and "no full run of micro-mae measured on dev" in prediction.why


def test_an_observation_gives_back_the_seconds_its_record_spent(tiny_registered):
    backbone, task = tiny_registered
    record = engine.run(make_spec("vpt-deep", task, backbone, 0, {"epochs": 2, "num_prompts": 3}, recipe=NONE))
    data = TASKS.get(task).load()
    sizes = SplitSizes(len(data.train), len(data.val), len(data.test))  # the tiny task reports none
    obs = observe(record, sizes)
    work = work_of(record.spec, sizes)
    clock = record.wallclock
    assert obs.kind == "prompts" and obs.extra_tokens == 3 and obs.device == record.provenance.device
    assert obs.seconds["train"] * work.images["train"] == pytest.approx(clock.train)
    spent = sum(obs.seconds[p] * work.images[p] for p in ("val", "test"))
    assert spent == pytest.approx(clock.eval)


def test_leave_one_out_on_the_committed_tune_study_predicts_every_run_within_25_percent():
    """A measurement of existing data: each committed run of the tune study predicted from the others."""
    checks = check_records(Store(RESULTS / "micro-study-tune").records(), [])
    errors = [c.error for c in checks]
    assert len(errors) == 12 and None not in errors
    assert max(map(abs, errors)) < 0.25 and statistics.median(map(abs, errors)) < 0.1


# --------------------------------------------------------------------------------------------------------------------
# The dry run and the budget


def _calibrate_tiny(results: Path, backbone: str) -> None:
    """A calibration measured here, on the tiny backbone, by `bench perf --calibrate`."""
    out = results / CALIBRATION
    assert main(["perf", "--calibrate", "--backbone", backbone, "--device", "cpu", "--out", str(out)]) == 0
    kinds = {o["kind"]: o["method"] for o in json.loads(out.read_text())["observations"]}
    assert kinds == representatives()


def test_dry_run_prints_images_and_hours_per_stage_and_the_total_with_its_basis(
    tiny_registered, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    backbone, task = tiny_registered
    results = tmp_path / "results"
    args = ["run", "--methods", "linear,vpt-deep", "--tasks", task, "--backbone", backbone, "--protocol", "tune",
            "--set", "lr=0.1,0.01", "--set", "weight_decay=0", "--epochs", "2", "--seeds", "0",  # not VPT's five
            "--results", str(results)]
    assert main(args + ["--dry-run"]) == 0
    out = _flat(capsys.readouterr().out)
    # Nothing measured yet: every run is counted as having no basis, by kind, none guessed.
    assert "; 6 run(s) with no basis, not counted" in out
    assert f"no basis for 3 run(s) (no frozen run of {backbone} measured on cpu" in out
    assert f"no basis for 3 run(s) (no prompts run of {backbone} measured on cpu" in out

    _calibrate_tiny(results, backbone)
    assert main(args + ["--dry-run"]) == 0
    out = _flat(capsys.readouterr().out)
    # 48 train, 16 val: a tune run trains 2 × 48 and scores 2 × 16; linear's first run pays its feature pass (64).
    assert "stage 1: tune on val: 4 run(s) to run (0 finished), 576 images, ≈" in out
    assert "stage 2: train+val -> test: 2 run(s) to run (0 finished)" in out
    assert re.search(rf"predicted: ≈ [0-9.e-]+ CPU-h on cpu .*, from calibration {re.escape(str(results))}"
                     rf"/calibration.json \(\d{{4}}-\d\d-\d\d\)$", out.strip()), out
    assert "no basis" not in out


def test_budget_refuses_an_over_budget_or_unpredictable_grid_before_anything_runs(
    tiny_registered, tmp_path, capsys
):
    backbone, task = tiny_registered
    results = tmp_path / "results"
    args = ["run", "--methods", "vpt-deep", "--tasks", task, "--backbone", backbone, "--protocol", "fixed",
            "--epochs", "1", "--results", str(results)]
    assert main(args + ["--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no basis" in err and "bench perf --calibrate" in err
    assert not (results / "runs").exists()

    _calibrate_tiny(results, backbone)
    assert main(args + ["--budget", "0.0000001"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--budget 1e-07 h exceeded: predicted ≈" in err
    assert not (results / "runs").exists()
    assert main(args + ["--budget", "5"]) == 0
    assert len(Store(results).records()) == 1
    assert main(args + ["--budget", "-1"]) == 2


def test_dry_run_of_vpt_and_spt_on_vtab_prints_a_total_with_its_basis(tmp_path, capsys, monkeypatch):
    """The issue's `bench run --methods vpt,spt --tasks vtab --data-root D --dry-run`, on a tiny VTAB layout, with the
    grid pinned to one point so that the test plans 76 runs, not 1,600."""
    from bench.tasks.vtab import VTAB

    monkeypatch.setenv("COLUMNS", "250")
    for task in VTAB:
        vtab_noah(tmp_path / "data", task.folders[0], classes=2, per_class=1)
    results = tmp_path / "results"
    device = engine.provenance(torch.device("cpu"))["device"]
    write_calibration(results / CALIBRATION, [
        Observation("vpt-deep", "prompts", "micro-mae", device, torch.get_num_threads(), 64, 50,
                    {"train": 0.01, "val": 0.004, "test": 0.004, "setup": 0.003, "probe": 0.05}, "calibration")])
    assert main(["run", "--methods", "vpt,spt", "--tasks", "vtab", "--data-root", str(tmp_path / "data"),
                 "--results", str(results), "--set", "lr=0.1", "--set", "weight_decay=0.01",
                 "--set", "num_prompts=10", "--seeds", "0", "--dry-run"]) == 0  # one final seed, not VPT's five
    out = _flat(capsys.readouterr().out)
    assert "stage 1: tune on val: 76 run(s) to run" in out and "stage 2: train+val -> test: 76 run(s)" in out
    assert re.search(r"predicted: ≈ [0-9.,]+ CPU-h on cpu .*, from calibration .*calibration\.json", out), out


# --------------------------------------------------------------------------------------------------------------------
# Reusable tuning picks


MICRO_TUNE = ["--methods", "linear", "--tasks", "sprites-loc", "--protocol", "tune", "--set", "lr=0.1,0.01",
              "--set", "weight_decay=0,0.001", "--epochs", "1"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny tuned grid on a micro task, run through the CLI, and its exported picks."""
    root = tmp_path_factory.mktemp("tuned")
    assert main(["run", *MICRO_TUNE, "--results", str(root / "a")]) == 0
    assert main(["report", "--results", str(root / "a"), "--export-tuned", str(root / "picks.json")]) == 0
    return root / "a", root / "picks.json"


def test_export_tuned_writes_the_val_best_pick_with_its_accuracy_and_runs(tuned):
    results, picks = tuned
    data = json.loads(picks.read_text())
    (pick,) = data["picks"]
    records = Store(results).records()
    stage1 = [r for r in records if r.spec.stage == "tune"]
    (final,) = [r for r in records if r.spec.stage == "final"]
    # The setting stage 2 trained: the val-best, the smaller lr among the val-best.
    trained = dataclasses.replace(final.spec, seed=0, stage="tune").run_id
    top = max(r.val_acc for r in stage1)
    assert pick["run"] == trained and pick["val_acc"] == top
    assert final.spec.hparams["lr"] == min(r.spec.hparams["lr"] for r in stage1 if r.val_acc == top)
    assert sorted(pick["candidates"]) == sorted(r.id for r in stage1) and len(stage1) == 4
    assert (pick["method"], pick["task"], pick["backbone"]) == ("linear", "sprites-loc", "micro-mae")


def test_from_tuned_skips_stage_1_and_trains_the_exported_hyper_parameters(tuned, tmp_path):
    results, picks = tuned
    plan = plan_run(RunRequest(methods="linear", tasks="sprites-loc,shapes-count", backbones=["micro-mae"],
                               seeds=[0, 1], results=tmp_path / "b", sets=["lr=0.1,0.01", "weight_decay=0,0.001"],
                               epochs=1, protocol="tune", picks_file=picks))
    # sprites-loc is covered: no stage-1 run of it; shapes-count is not: its stage 1 stays.
    assert {s.task for s in plan.tuning} == {"shapes-count"} and len(plan.tuning) == 4
    exported = json.loads(picks.read_text())["picks"][0]["spec"]["hparams"]
    assert [(s.task, s.seed, s.stage, s.hparams) for s in plan.picked_finals] == [
        ("sprites-loc", 0, "final", exported), ("sprites-loc", 1, "final", exported)]


def test_export_then_from_tuned_reruns_exactly_the_final_runs_of_the_tuned_grid(tuned, tmp_path):
    results, picks = tuned
    again = tmp_path / "again"
    assert main(["run", *MICRO_TUNE, "--results", str(again), "--from-tuned", str(picks)]) == 0
    finals = {r.id: r for r in Store(results).records() if r.spec.stage == "final"}
    rerun = Store(again).records()
    assert {r.id for r in rerun} == set(finals) and {r.spec.stage for r in rerun} == {"final"}
    (record,) = rerun
    pick = json.loads(picks.read_text())["picks"][0]
    assert record.hparams_from == {"from": "tuned file", "file": str(picks), "run": pick["run"],
                                   "val_acc": pick["val_acc"]}
    assert finals[record.id].hparams_from == {"from": "stage 1", "run": pick["run"], "val_acc": pick["val_acc"]}
    assert record.test_acc == pytest.approx(finals[record.id].test_acc, abs=1e-6)


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"picks": []}', "is not a tuned-picks file"),
    ('{"format": "bench-tuned-picks", "version": 9, "picks": []}', "has version 9"),
    ('{"format": "bench-tuned-picks", "version": 1, "picks": [{"spec": {}}]}', "lacks or mangles"),
])
def test_a_malformed_picks_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "picks.json"
    path.write_text(content)
    assert main(["run", *MICRO_TUNE, "--results", str(tmp_path / "r"), "--from-tuned", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_picks_file_for_other_cells_is_one_line_naming_both(tuned, tmp_path, capsys):
    _, picks = tuned
    args = ["run", "--methods", "linear", "--tasks", "digits", "--protocol", "tune", "--results", str(tmp_path)]
    assert main(args + ["--from-tuned", str(picks), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "covers none" in err and "linear · sprites-loc" in err and "linear · digits" in err


def test_a_pick_tuned_under_other_fixed_values_is_one_line_not_a_silent_override(tuned, tmp_path, capsys):
    _, picks = tuned
    other = [a if a != "1" else "2" for a in MICRO_TUNE]  # --epochs 2: the pick was tuned at 1
    assert main(["run", *other, "--results", str(tmp_path), "--from-tuned", str(picks), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was tuned with epochs=1 (this grid: 2)" in err


def test_export_tuned_of_a_store_without_stage_1_runs_is_one_line(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path), "--export-tuned", str(tmp_path / "p.json")]) == 2
    assert "holds no finished stage-1" in capsys.readouterr().err


def test_read_picks_rejects_an_edited_pick_whose_id_no_longer_matches(tuned, tmp_path):
    from bench.picks import read_picks

    _, picks = tuned
    data = json.loads(picks.read_text())
    data["picks"][0]["spec"]["hparams"]["lr"] = 5.0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(BenchError, match="is not the stage-1 run it names"):
        read_picks(edited)
