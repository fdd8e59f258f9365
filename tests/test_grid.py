"""The grid (issue 4): expansion and stable ids, the tune -> final protocol (test read only in the final stage),
resume after kill -9, SIGTERM stopping the workers, two processes on one results directory, failure isolation, a real
Dask cluster, the dry run, plain progress lines, and the store's summary over seeds.

In-process tests use the tiny backbone/task from conftest; subprocess tests run the real `python -m bench.cli` with the
linear probe (head on cached features) on micro tasks for one epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from bench import BenchError
from bench.artifacts import PREDICTIONS, relative_path
from bench.backbone import DEFAULT_BACKBONE
from bench.cli import main
from bench.config import RunSpec
from bench.data import TASKS, Task, TaskData, TensorSplit
from bench.method import METHODS
from bench.progress import GridDisplay
from bench.recipes import RECIPES, make_spec
from bench.registry import Entry
from bench.scheduler import (
    Execution, Grid, GridEvents, RunRequest, _caches, execute, final_specs, plan_run, run_plan, select_best,
)
from bench.record import RunRecord
from bench.store import Store, summarise, variant_labels
from records import make_record

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
       "COLUMNS": "200"}
MICRO3 = "sprites-loc,sprites-ori,shapes-count"  # the micro tasks quickest to load
RESULTS = Path(__file__).parents[1] / "results"  # the committed records


def _cli(*args: str, stdout) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], env=ENV, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone, for phrase searches."""
    return re.sub(r"\s+", " ", text)


def _snapshot(store: Store) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.runs.glob("*.json")}


def _leftovers(store: Store) -> list[str]:
    """Anything in the records folder that is not a finished record file (temp files start with a dot)."""
    return [p.name for p in store.runs.iterdir() if p.suffix != ".json" or p.name.startswith(".")]


# --------------------------------------------------------------------------------------------------------------------
# 1. Grid expansion and ids


def test_fixed_grid_is_the_product_of_its_axes_and_a_sweep_applies_only_to_methods_that_have_the_key():
    grid = Grid(["linear", "vpt-deep"], ["digits", "sprites-loc"], ["micro-vit", "vit_tiny_patch16_224"], [0, 1, 2],
                {"lr": ["0.1", "0.01"], "num_prompts": ["5", "10"]})
    specs = grid.fixed_specs()
    linear = [s for s in specs if s.method == "linear"]
    vpt = [s for s in specs if s.method == "vpt-deep"]
    # linear has no num_prompts: lr(2) × tasks(2) × backbones(2) × seeds(3); vpt-deep also sweeps num_prompts(2).
    assert len(linear) == 2 * 2 * 2 * 3 and len(vpt) == 2 * 2 * 2 * 2 * 3 and len(specs) == 72
    assert all("num_prompts" not in s.hparams for s in linear)
    assert {(s.hparams["lr"], s.hparams["num_prompts"]) for s in vpt} == set(itertools.product([0.1, 0.01], [5, 10]))
    assert {s.stage for s in specs} == {"fixed"}
    assert len({s.run_id for s in specs}) == len(specs)
    # Resolved hyper-parameters: defaults filled in, epochs=0 replaced by the task's default; the linear probe keeps
    # its own 100.
    assert all(s.hparams["epochs"] == TASKS.get(s.task).epochs for s in vpt)
    assert all(s.hparams["epochs"] == 100 for s in linear)

    with pytest.raises(BenchError, match="num_prompts"):
        Grid(["linear"], ["digits"], ["micro-vit"], [0], {"num_prompts": ["5"]})
    with pytest.raises(BenchError, match="nonsense"):
        Grid(["linear", "vpt-deep"], ["digits"], ["micro-vit"], [0], {"nonsense": ["1"]})


def test_run_ids_are_stable_and_change_with_seed_hparams_and_stage():
    def ids(**change) -> list[str]:
        axes = dict(methods=["linear"], tasks=["digits"], backbones=["micro-vit"], seeds=[0], sweeps={"lr": ["0.1"]})
        axes.update(change)
        return [s.run_id for s in Grid(**axes).fixed_specs()]

    assert ids() == ids() and len(ids()) == 1
    assert ids(seeds=[1]) != ids()
    assert ids(sweeps={"lr": ["0.2"]}) != ids()
    assert ids(sweeps={"lr": ["0.1"], "weight_decay": ["0.5"]}) != ids()
    # The same hyper-parameters written differently are one run.
    assert ids(sweeps={"lr": ["0.10"]}) == ids()
    (spec,) = Grid(["linear"], ["digits"], ["micro-vit"], [0], {"lr": ["0.1"]}).fixed_specs()
    stages = {RunSpec(spec.method, spec.task, spec.backbone, spec.seed, spec.hparams, spec.weights, stage).run_id
              for stage in ("fixed", "tune", "final")}
    assert spec.run_id in stages and len(stages) == 3
    # Built by hand from the same fields, a spec has the grid's id (its value is pinned in the next test).
    again = RunSpec("linear", "digits", "micro-vit", 0, dict(spec.hparams), None, "fixed")
    assert again.run_id == spec.run_id and re.fullmatch(r"[0-9a-f]{16}", spec.run_id)


def test_a_run_id_is_the_hash_of_its_spec_pinned_to_the_value_records_are_named_by():
    # A change to the id scheme (hash, canonical form, field names) renames every record users already have: a rerun
    # would recompute them all and `bench report` would count both copies.
    spec = RunSpec("linear", "digits", "micro-vit", 0, {"epochs": 10, "lr": 0.1})
    assert spec.run_id == "0155dcb7078fca5e"
    assert RunSpec("linear", "digits", "micro-vit", 0, {"lr": 0.1, "epochs": 10}).run_id == spec.run_id
    every_field = RunSpec("vpt-deep", "cub", "mae-vit-b16", 2, {"epochs": 100, "lr": 0.05, "num_prompts": 20},
                          weights="/data/mae.pth", stage="final", recipe="vpt-paper")
    assert every_field.run_id == "2364e8c970ddfa1f"


def test_a_spec_resolved_from_a_recipe_has_the_id_of_the_committed_record_of_that_run():
    # Resolution (recipe values, method defaults, parsed overrides) feeds the id: the committed study's records must
    # keep being found, or its documented commands would recompute them.
    default = make_spec("spt-deep", "digits", "micro-mae", 0)  # the default recipe for SPT: spt-paper
    assert (default.recipe, default.run_id) == ("spt-paper", "8cd187fa8011745b")
    swept = make_spec("vpt-deep", "sprites-loc", "micro-mae", 1, {"epochs": "30"}, recipe="spt-paper")
    assert swept.run_id == "9cd7f41e4f4f7a58"
    for spec in (default, swept):
        assert json.loads((RESULTS / "micro-study-epochs" / "runs" / f"{spec.run_id}.json").read_text())["spec"] == \
            spec.to_dict()


def test_the_micro_studys_documented_commands_name_exactly_its_committed_records():
    micro = TASKS.resolve("micro")
    norms = {"feature_norm": ["none", "batchnorm"]}
    grids = [  # the three `bench run` lines of the micro study's README, as `bench run` builds their grids
        Grid(["pixels"], micro, ["micro-mae"], [0, 1, 2], norms),
        Grid(["linear"], micro, ["micro-mae", "micro-mae-init"], [0, 1, 2], norms),
        Grid(["vpt-deep", "spt-deep"], micro, ["micro-mae"], [0, 1, 2], recipe="spt-paper"),
    ]
    planned = {spec.run_id for grid in grids for spec in grid.fixed_specs()}
    assert planned == {path.stem for path in (RESULTS / "micro-study" / "runs").glob("*.json")}
    # The rerun with artifacts (its `bench run` line): the same runs of two tasks, under the same ids.
    rerun = Grid(["vpt-deep", "spt-deep"], ["sprites-loc", "digits"], ["micro-mae"], [0, 1, 2], recipe="spt-paper")
    rerun_ids = {spec.run_id for spec in rerun.fixed_specs()}
    assert rerun_ids == {path.stem for path in (RESULTS / "micro-study-rerun" / "runs").glob("*.json")}
    assert rerun_ids < planned


def test_every_committed_record_is_named_by_the_id_recomputed_from_its_own_spec():
    paths = sorted(RESULTS.glob("*/runs/*.json"))
    assert len({path.parent.parent.name for path in paths}) >= 5
    for path in paths:
        record = RunRecord.from_dict(json.loads(path.read_text()))
        assert path.stem == record.id == record.spec.run_id, path


def test_duplicate_grid_points_collapse_to_one_run():
    grid = Grid(["linear", "linear"], ["digits", "digits"], ["micro-vit"], [0, 0], {"lr": ["0.1", "0.10", "1e-1"]})
    assert len(grid.fixed_specs()) == 1
    assert len(grid.tuning_specs()) == len(Grid(["linear"], ["digits"], ["micro-vit"], [0], {"lr": ["0.1"]})
                                           .tuning_specs())


def test_tuning_specs_search_the_methods_declared_grid_with_the_first_seed_and_a_set_sweep_replaces_that_axis():
    search = METHODS.get("linear").search
    assert set(search) >= {"lr", "weight_decay"}
    tuning = Grid(["linear"], ["digits", "sprites-loc"], ["micro-vit"], [3, 1, 2]).tuning_specs()
    assert len(tuning) == 2 * math.prod(len(v) for v in search.values())
    assert {s.seed for s in tuning} == {3} and {s.stage for s in tuning} == {"tune"}
    for task in ("digits", "sprites-loc"):
        points = {tuple(s.hparams[k] for k in search) for s in tuning if s.task == task}
        assert points == set(itertools.product(*search.values()))

    swept = Grid(["linear"], ["digits"], ["micro-vit"], [0], {"lr": ["0.5", "0.05"], "epochs": ["1"]}).tuning_specs()
    assert len(swept) == 2 * len(search["weight_decay"])
    assert {s.hparams["lr"] for s in swept} == {0.5, 0.05}
    assert {s.hparams["weight_decay"] for s in swept} == set(search["weight_decay"])
    assert {s.hparams["epochs"] for s in swept} == {1}
    # The prompt methods search their recipe's grid (VPT's learning rate × weight decay), or their own without one.
    vpt = Grid(["vpt-deep"], ["digits"], ["micro-vit"], [0]).tuning_specs()
    assert len(vpt) == math.prod(len(v) for v in RECIPES.get("vpt-paper").search["*"].values()) > 1
    assert {s.recipe for s in vpt} == {"vpt-paper"}
    plain = Grid(["vpt-deep"], ["digits"], ["micro-vit"], [0], recipe="none").tuning_specs()
    assert len(plain) == math.prod(len(v) for v in METHODS.get("vpt-deep").search.values()) > 1


# --------------------------------------------------------------------------------------------------------------------
# 2. The protocol


def _stage1_record(spec: RunSpec, val_acc: float | None) -> RunRecord:
    if val_acc is None:
        return make_record(spec, status="failed")
    return make_record(spec, test_acc=None, val_acc=val_acc)


def test_select_best_picks_the_val_best_setting_ties_to_the_smaller_lr_and_final_specs_train_it_per_seed(tmp_path):
    store = Store(tmp_path)
    tuning = Grid(["linear"], ["digits", "sprites-loc", "mnist5k"], ["micro-vit"], [0]).tuning_specs()
    val = {
        (0.03, 0.0): 80.0,  # tied best ...
        (0.003, 1e-4): 80.0,  # ... the smaller lr wins the tie
        (0.001, 0.0): 79.0,  # smaller lr still, but worse on val
        (0.1, 0.0): None,  # failed: not a candidate
    }
    for spec in tuning:
        if spec.task == "digits":
            store.write(_stage1_record(spec, val.get((spec.hparams["lr"], spec.hparams["weight_decay"]), 50.0)))
        elif spec.task == "sprites-loc":
            store.write(_stage1_record(spec, None))  # every stage-1 run failed
        # mnist5k: nothing ran at all
    best, unselectable = select_best(tuning, store)
    assert list(best) == [("linear", "digits", "micro-vit", None)]
    winner = best[("linear", "digits", "micro-vit", None)]
    assert (winner.hparams["lr"], winner.hparams["weight_decay"]) == (0.003, 1e-4) and winner.stage == "tune"
    assert sorted(unselectable) == [("linear", task, "micro-vit", None) for task in ("mnist5k", "sprites-loc")]

    finals = final_specs(best, [0, 1, 2])
    assert [s.seed for s in finals] == [0, 1, 2]
    assert all(s.stage == "final" and s.hparams == winner.hparams for s in finals)
    assert all((s.method, s.task, s.backbone, s.weights) == (winner.method, winner.task, winner.backbone, None)
               for s in finals)
    assert len({s.run_id for s in finals} | {winner.run_id}) == 4


class GuardedSplit:
    """A test split that raises when read while armed, and remembers every attempt."""

    def __init__(self, inner: TensorSplit) -> None:
        self.inner, self.armed, self.reads = inner, True, []

    def __len__(self) -> int:
        return len(self.inner)

    def _read(self, what: str) -> None:
        self.reads.append(what)
        if self.armed:
            raise AssertionError(f"the test split was read ({what})")

    def batches(self, batch_size, generator=None, device=None):
        self._read("batches")
        return self.inner.batches(batch_size, generator, device)

    def image_batches(self, index, batch_size, generator=None):
        self._read("image_batches")
        return self.inner.image_batches(index, batch_size, generator)

    def merged_with(self, other):
        self._read("merged_with")
        return self.inner.merged_with(other)

    def with_data_path(self, data_path):
        return self  # reads nothing: the run's decode cache serves image files, and this split holds tensors


@pytest.fixture
def guarded_task(tiny_registered, monkeypatch):
    """The tiny task, registered again under another name with a test split that raises when read while armed.
    Returns (backbone, task name, the guard)."""
    backbone, tiny = tiny_registered
    data = TASKS.get(tiny).load()
    guard = GuardedSplit(data.test)
    name = "tiny-guarded-test"
    task = Task(name, "test/tiny", 10, lambda _root=None: TaskData(data.train, data.val, guard, data.info), epochs=1)
    monkeypatch.setitem(TASKS._entries, name, Entry(name, task, "tiny task whose test split raises when read"))
    return backbone, name, guard


def test_tune_protocol_never_reads_test_in_stage_1_and_the_final_stage_reads_it(guarded_task, tmp_path):
    backbone, task, guard = guarded_task
    store = Store(tmp_path)
    grid = Grid(["linear"], [task], [backbone], [0, 1], {"lr": ["0.3", "0.01"], "epochs": ["2"]})
    tuning = grid.tuning_specs()
    assert len(tuning) == 2 * len(METHODS.get("linear").search["weight_decay"])

    stage1 = execute(tuning, Execution(store), GridEvents())
    assert [o.status for o in stage1.outcomes] == ["done"] * len(tuning), [o.error for o in stage1.outcomes]
    assert guard.reads == []
    features = store.root / "cache" / "features"
    assert len(list(features.glob("*.pt"))) == 2, "the whole stage shares one pass over train and one over val"
    records = {spec.run_id: store.read(spec.run_id) for spec in tuning}
    for record in records.values():
        assert record.status == "done" and record.spec.stage == "tune"
        assert record.metrics.test_acc is None and record.throughput.test_images_per_s is None
        assert len(record.curves["val_acc"]) == 2 and record.metrics.val_acc == record.curves["val_acc"][-1]

    best, unselectable = select_best(tuning, store)
    assert unselectable == []
    (winner,) = best.values()
    top = max(r.metrics.val_acc for r in records.values())
    tied = [s for s in tuning if records[s.run_id].metrics.val_acc == top]
    assert winner in tied and winner.hparams["lr"] == min(s.hparams["lr"] for s in tied)

    # The final stage is the one that reads test: with the guard armed, each final run fails on reading it.
    finals = final_specs(best, [0, 1])
    armed = execute(finals, Execution(store), GridEvents())
    assert [o.status for o in armed.outcomes] == ["failed", "failed"]
    assert all("the test split was read" in o.error for o in armed.outcomes)
    assert guard.reads and set(guard.reads) == {"batches"}

    # Disarmed, the final runs train on train+val (no val scoring) and report test.
    guard.armed = False
    final = execute(finals, Execution(store, retry_failed=True), GridEvents())
    assert [o.status for o in final.outcomes] == ["done", "done"]
    assert len(list(features.glob("*.pt"))) == 3, "the seeds of the final stage share one pass over train+val"
    for spec in finals:
        record = store.read(spec.run_id)
        assert record.spec.stage == "final" and record.spec.hparams == winner.hparams
        assert record.metrics.test_acc is not None and record.metrics.val_acc is None
        assert record.curves["val_acc"] == [] and len(record.curves["train_loss"]) == 2
    # Stage 1 stays untouched by the final stage.
    assert all(store.read(spec.run_id) == records[spec.run_id] for spec in tuning)


# --------------------------------------------------------------------------------------------------------------------
# 3. Resume after kill -9, and 8. plain progress lines


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """A real `bench run` of three runs, SIGKILLed (whole process group) once its first record exists, then rerun."""
    root = tmp_path_factory.mktemp("resume")
    store = Store(root / "results")
    args = ("run", "--methods", "linear", "--tasks", MICRO3, "--epochs", "1", "--results", str(store.root))
    with open(root / "first.log", "w") as log:
        proc = _cli(*args, stdout=log)
        deadline = time.monotonic() + 240
        try:
            while not (store.runs.is_dir() and list(store.runs.glob("*.json"))):
                assert proc.poll() is None, (root / "first.log").read_text()
                assert time.monotonic() < deadline, "no record appeared in 240 s"
                time.sleep(0.02)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    at_kill = {"leftovers": _leftovers(store), "snapshot": _snapshot(store),
               "records": [RunRecord.from_dict(json.loads(b)) for _, b in _snapshot(store).values()]}
    with open(root / "second.log", "w") as log:
        rerun = _cli(*args, stdout=log)
        try:
            rerun.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rerun.pid, signal.SIGKILL)
    return store, at_kill, rerun.returncode, (root / "second.log").read_text()


def test_kill_9_mid_grid_leaves_only_complete_records_and_a_rerun_computes_only_the_unfinished_runs(
        killed_then_resumed):
    store, at_kill, returncode, output = killed_then_resumed
    assert at_kill["leftovers"] == []
    finished = at_kill["records"]
    assert 1 <= len(finished) < 3, "the kill came after the grid finished; nothing was left to resume"
    assert all(r.status == "done" and r.metrics.test_acc is not None for r in finished)

    assert returncode == 0, output
    pending = 3 - len(finished)
    assert f"{pending} run(s) done, {len(finished)} already finished" in _flat(output)
    assert len(re.findall(r"^done   ", output, re.M)) == pending
    for record in finished:  # the finished runs were not run again ...
        assert f"start linear · {record.spec.task} " not in output
    after = _snapshot(store)
    assert {k: after[k] for k in at_kill["snapshot"]} == at_kill["snapshot"]  # ... nor rewritten
    assert len(after) == 3 and _leftovers(store) == []
    assert sorted(r.spec.task for r in store.records()) == sorted(MICRO3.split(","))
    assert all(r.status == "done" for r in store.records())


def test_progress_prints_plain_start_done_lines_and_the_summary_when_stdout_is_not_a_terminal(killed_then_resumed):
    store, at_kill, _, output = killed_then_resumed
    assert "\x1b[" not in output  # no live display, no colour codes
    resumed = [r.spec.task for r in store.records() if r not in at_kill["records"]]
    assert re.search(r"^runs: 3 run\(s\), \d already finished$", output, re.M)
    for task in resumed:
        assert re.search(rf"^start linear · {task} · {DEFAULT_BACKBONE} · seed 0$", output, re.M), output
        assert re.search(r"^  epoch 1/1 loss \d+\.\d+ val \d+\.\d%$", output, re.M), output
        assert re.search(rf"^done   linear · {task} · {DEFAULT_BACKBONE} · seed 0: val \d+\.\d\d%, test \d+\.\d\d%$", output,
                         re.M), output
    assert "test accuracy (%): mean ± sample std over seeds" in output
    for task in MICRO3.split(","):  # the summary covers the whole grid, resumed or not
        assert re.search(rf"linear .* {task} .* {DEFAULT_BACKBONE} .* fixed .* \d+\.\d\d .* 1 ", output), output


def _live_parent(pid: int) -> int | None:
    """The parent pid of a live process, from /proc (fields after the command name, which may hold spaces); None once
    it is gone or a zombie."""
    with contextlib.suppress(OSError):
        state, parent = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:2]
        return int(parent) if state != "Z" else None
    return None


def _alive(pid: int) -> bool:
    return _live_parent(pid) is not None


def _children(pid: int) -> set[int]:
    """Live processes whose parent is `pid`."""
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _live_parent(int(p.name)) == pid}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc")
def test_sigterm_stops_a_parallel_grid_and_its_worker_processes_and_records_no_half_run(tmp_path):
    store = Store(tmp_path / "results")
    # Runs long enough that both workers are mid-run when the signal comes.
    args = ("run", "--methods", "vpt-deep", "--tasks", "sprites-loc", "--seeds", "0,1,2", "--epochs", "200",
            "--jobs", "2", "--results", str(store.root))
    with open(tmp_path / "grid.log", "w") as log:
        proc = _cli(*args, stdout=log)
        try:
            deadline = time.monotonic() + 120
            while len(_children(proc.pid)) < 2:
                assert proc.poll() is None, (tmp_path / "grid.log").read_text()
                assert time.monotonic() < deadline, "the grid started no worker processes in 120 s"
                time.sleep(0.1)
            time.sleep(3)  # let the workers take their first runs
            workers = _children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            deadline = time.monotonic() + 30
            while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [pid for pid in workers if _alive(pid)]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    output = (tmp_path / "grid.log").read_text()
    assert proc.returncode == 130, output
    assert "interrupted; finished runs are recorded, rerun to resume" in output
    assert left == [], f"worker processes {left} outlived the grid"
    # No run finished, and none was recorded as failed.
    assert store.records() == [] and (not store.runs.is_dir() or _leftovers(store) == [])


# --------------------------------------------------------------------------------------------------------------------
# 4. Two processes on one results directory


def test_two_concurrent_bench_runs_on_one_results_dir_execute_each_run_exactly_once(tmp_path):
    store = Store(tmp_path / "results")
    args = ("run", "--methods", "linear", "--tasks", "sprites-loc,sprites-ori", "--epochs", "1",
            "--results", str(store.root))
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with open(logs[0], "w") as a, open(logs[1], "w") as b:
        procs = [_cli(*args, stdout=a), _cli(*args, stdout=b)]
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    combined = "".join(outputs)
    assert "FAILED" not in combined, combined
    for task in ("sprites-loc", "sprites-ori"):
        assert len(re.findall(rf"^done   linear · {task} · ", combined, re.M)) == 1, combined
        assert len(re.findall(rf"^start linear · {task} · ", combined, re.M)) == 1, combined
    records = store.records()
    assert len(records) == 2 and all(r.status == "done" for r in records)
    assert _leftovers(store) == []


def test_a_run_whose_lock_another_process_holds_is_reported_busy_and_not_executed(tiny_registered, tmp_path):
    backbone, task = tiny_registered
    store = Store(tmp_path)
    specs = Grid(["linear"], [task], [backbone], [0, 1], {"epochs": ["1"]}).fixed_specs()
    (store.root / "locks").mkdir(parents=True)
    lock_file = str(store.root / "locks" / f"{specs[0].run_id}.lock")
    # Run the holder in a subprocess: a lock is per process, as between two `bench run`s.
    holder = subprocess.Popen([sys.executable, "-c", "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); "
                               "l.acquire(); print('held', flush=True); time.sleep(120)", lock_file],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = execute(specs, Execution(store), GridEvents())
    finally:
        holder.kill()
        holder.wait()
    assert {o.spec.run_id: o.status for o in result.outcomes} == {specs[0].run_id: "busy", specs[1].run_id: "done"}
    assert store.read(specs[0].run_id) is None
    # Once the holder is gone, the run executes.
    assert [o.status for o in execute(specs, Execution(store), GridEvents()).outcomes] == ["skipped", "done"]
    assert store.is_done(specs[0].run_id)


def test_a_run_another_process_finishes_after_the_grid_was_planned_is_skipped_and_not_reported_failed(
        tiny_registered, tmp_path):
    backbone, task = tiny_registered
    store = Store(tmp_path)
    specs = Grid(["linear"], [task], [backbone], [0, 1], {"epochs": ["1"]}).fixed_specs()
    console = Console(file=io.StringIO(), width=200)

    class FinishedElsewhere(GridDisplay):
        def grid_started(self, title: str, total: int, skipped: int) -> None:
            super().grid_started(title, total, skipped)
            execute(specs[:1], Execution(store), GridEvents())  # planned as pending; now another "process" finishes it

    with FinishedElsewhere(console) as display:
        result = execute(specs, Execution(store), display)
    assert {o.spec.run_id: o.status for o in result.outcomes} == {specs[0].run_id: "skipped", specs[1].run_id: "done"}
    out = console.file.getvalue()
    assert "FAILED" not in out, out
    assert re.search(rf"^skip   {re.escape(specs[0].label)}: another process finished it$", out, re.M), out
    assert re.search(rf"^done   {re.escape(specs[1].label)}: ", out, re.M), out


# What a record measures about the machine while it ran, rather than what the run computed.
MEASURED = {"wallclock", "cpu_share", "throughput", "memory"}


def test_jobs_2_writes_the_records_jobs_1_writes(tmp_path, capsys):
    # Worker processes register only what the packages register, so this grid runs on a micro task: a head on cached
    # pixels and prompts trained through the backbone, one epoch each.
    stores = {}
    for jobs in ("1", "2"):
        stores[jobs] = Store(tmp_path / f"jobs{jobs}")
        assert main(["run", "--methods", "pixels,vpt-deep", "--tasks", "sprites-loc", "--backbone", "micro-vit",
                     "--epochs", "1", "--set", "num_prompts=2", "--jobs", jobs, "--results", str(stores[jobs].root)]) == 0
    capsys.readouterr()
    one, two = ({r.id: r for r in store.records()} for store in stores.values())
    assert len(one) == 2 and set(one) == set(two)
    for run_id, record in one.items():
        assert record.status == "done", record.error
        # Equal to the bit, measurements aside: seeds, data, caches and threads (one torch thread per run here, as in
        # each of two workers on two cores) do not depend on where a run executes. On 2 cores, --jobs 1 at 2 threads
        # also gave bit-equal curves and metrics; torch does not promise that across thread counts, so it is not
        # asserted.
        unmeasured = {name: None for name in MEASURED}
        assert dataclasses.replace(record, **unmeasured) == dataclasses.replace(two[run_id], **unmeasured), \
            record.spec.method


# --------------------------------------------------------------------------------------------------------------------
# 5. Failure isolation (the real CLI entry point, in-process, on the tiny task)


def test_a_nan_run_is_recorded_failed_the_rest_finish_and_retry_failed_reruns_it(
        tiny_registered, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
    backbone, task = tiny_registered
    store = Store(tmp_path / "results")
    args = ["run", "--methods", "linear", "--tasks", task, "--backbone", backbone, "--protocol", "fixed",
            "--epochs", "1", "--set", "lr=1e37,0.01", "--results", str(store.root)]
    # lr=1e37 overflows the loss to inf in the first epoch (lr=1e30 only makes it huge: 5e30, finite).
    assert main(args) == 1
    out = capsys.readouterr().out
    by_lr = {r.spec.hparams["lr"]: r for r in store.records()}
    assert set(by_lr) == {1e37, 0.01}
    bad, good = by_lr[1e37], by_lr[0.01]
    assert good.status == "done" and good.metrics.test_acc is not None
    assert bad.status == "failed" and bad.metrics is None
    assert re.search(r"NonFiniteLoss: training loss became (nan|inf|-inf) in epoch 1", bad.error), bad.error
    assert bad.traceback.startswith("Traceback") and "NonFiniteLoss" in bad.traceback
    flat = _flat(out)
    assert "1 run(s) done, 0 already finished, 0 running elsewhere, 1 failed" in flat
    assert f"failed linear · {task} · {backbone} · seed 0: NonFiniteLoss: training loss became" in flat
    assert "--retry-failed" in flat
    # The summary table holds the finished run only.
    assert re.search(rf"linear .* {task} .* fixed .* {good.metrics.test_acc:.2f} .* 1", flat)

    before = _snapshot(store)
    assert main(args) == 0  # without --retry-failed: the failed run counts as finished
    assert "0 run(s) done, 2 already finished" in _flat(capsys.readouterr().out)
    assert _snapshot(store) == before

    assert main(args + ["--retry-failed"]) == 1  # reruns the failed run (it diverges again), not the finished one
    out = capsys.readouterr().out
    assert "0 run(s) done, 1 already finished, 0 running elsewhere, 1 failed" in _flat(out)
    assert len(re.findall(r"^start ", out, re.M)) == 1
    after = _snapshot(store)
    assert after[f"{good.id}.json"] == before[f"{good.id}.json"]
    assert after[f"{bad.id}.json"][0] != before[f"{bad.id}.json"][0]
    assert store.read(bad.id).status == "failed"


# --------------------------------------------------------------------------------------------------------------------
# 6. A real Dask cluster


def test_dask_backend_runs_a_grid_on_a_local_cluster_in_its_worker_processes(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    store = Store(tmp_path / "results")
    specs = Grid(["linear"], ["sprites-loc", "sprites-ori"], ["micro-vit"], [0], {"epochs": ["1"]}).fixed_specs()
    # One worker process with two threads (one torch import). Not one thread: joblib treats a cluster with a single
    # thread as n_jobs=1 and runs every run sequentially in the calling process, never on the cluster.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        result = execute(specs, Execution(store, backend="dask", dask_address=cluster.scheduler_address), GridEvents())
        with distributed.Client(cluster) as client:
            in_workers = client.run(lambda: "bench.engine" in sys.modules and "bench.methods" in sys.modules)
            worker_pids = set(client.run(os.getpid).values())
    assert sorted(o.status for o in result.outcomes) == ["done", "done"], [o.error for o in result.outcomes]
    assert all(in_workers.values()), "the runs did not execute in the Dask worker"
    assert os.getpid() not in worker_pids
    records = store.records()
    assert sorted(r.spec.task for r in records) == ["sprites-loc", "sprites-ori"]
    assert all(r.status == "done" and r.metrics.test_acc is not None for r in records)
    assert _leftovers(store) == []


def test_dask_backend_without_a_scheduler_is_a_one_line_error(tmp_path, capsys):
    code = main(["run", "--methods", "linear", "--tasks", "digits", "--backend", "dask",
                 "--results", str(tmp_path / "results")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:") and "--scheduler" in lines[0]
    assert "Traceback" not in captured.err and not (tmp_path / "results").exists()


# --------------------------------------------------------------------------------------------------------------------
# 7. The dry run


def test_dry_run_prints_the_grid_with_statuses_and_writes_nothing(tiny_registered, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
    backbone, task = tiny_registered
    results = tmp_path / "results"
    fixed = ["run", "--methods", "linear", "--tasks", task, "--backbone", backbone, "--protocol", "fixed",
             "--seeds", "0,1", "--set", "lr=0.1,0.01", "--epochs", "1", "--results", str(results)]
    assert main(fixed + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid (dry run: nothing is executed)" in out and re.search(r"^4 run\(s\)$", out, re.M)
    assert out.count("pending") == 4
    assert not results.exists()

    specs = Grid(["linear"], [task], [backbone], [0, 1], {"lr": ["0.1", "0.01"], "epochs": ["1"]}).fixed_specs()
    store = Store(results)
    execute(specs[:1], Execution(store), GridEvents())
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    assert main(fixed + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("pending") == 3 and re.search(rf"│ fixed .*│ done .*│ {specs[0].run_id} │", out), out
    assert "runs: 3 run(s) to run (1 finished)" in _flat(out)
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before
    # The estimate counts what the grid would run: a done run whose artifacts are gone reruns under
    # --retry-artifacts, and only then.
    (results / relative_path(specs[0].run_id, PREDICTIONS)).unlink()
    assert main(fixed + ["--dry-run"]) == 0
    assert "runs: 3 run(s) to run (1 finished)" in _flat(capsys.readouterr().out)
    assert main(fixed + ["--dry-run", "--retry-artifacts"]) == 0
    out = _flat(capsys.readouterr().out)
    assert "predictions missing" in out and "runs: 4 run(s) to run (0 finished)" in out
    before = sorted(p.relative_to(results) for p in results.rglob("*"))

    tune = fixed[:]
    tune[tune.index("fixed")] = "tune"
    assert main(tune + ["--dry-run"]) == 0
    out = _flat(capsys.readouterr().out)
    # Stage 1 only: lr(2) × the linear search's weight decays, first seed; stage 2 is announced, not listed.
    n = 2 * len(METHODS.get("linear").search["weight_decay"])
    assert f"{n} run(s); stage 2 trains 1 selected setting(s) in 2 run(s) (--seeds)" in out
    assert f"stage-1 grid points per task: linear {n}" in out
    assert "final" not in out and sorted(p.relative_to(results) for p in results.rglob("*")) == before


def test_the_run_executes_the_plan_the_dry_run_lists_then_trains_the_val_best_setting_per_seed(
    tiny_registered, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    backbone, task = tiny_registered
    results = tmp_path / "results"
    request = RunRequest(methods="linear", tasks=task, backbones=[backbone], seeds=[0, 1], results=results,
                         sets=["lr=0.1,0.01"], epochs=1, protocol="tune")
    plan = plan_run(request)
    assert plan.fixed == [] and plan.tuning == Grid(["linear"], [task], [backbone], [0, 1],
                                                    {"lr": ["0.1", "0.01"], "epochs": ["1"]}).tuning_specs()
    assert plan.selections == 1 and plan.seeds == [0, 1]

    assert main(["run", "--methods", "linear", "--tasks", task, "--backbone", backbone, "--seeds", "0,1",
                 "--set", "lr=0.1,0.01", "--epochs", "1", "--protocol", "tune", "--results", str(results),
                 "--dry-run"]) == 0
    listed = set(re.findall(r"│ ([0-9a-f]{16}) │", capsys.readouterr().out))
    assert listed == {spec.run_id for spec in plan.known}

    result = run_plan(plan, Execution(Store(results)), GridEvents())
    best, _ = select_best(plan.tuning, Store(results))
    finals = final_specs(best, [0, 1])
    assert [o.spec for o in result.outcomes] and {o.status for o in result.outcomes} == {"done"}
    assert result.reported == finals and result.unselectable == []
    assert {r.id for r in Store(results).records()} == listed | {spec.run_id for spec in finals}


def test_a_run_of_one_process_loads_each_task_and_backbone_once(tiny_registered, tmp_path, monkeypatch):
    backbone, task = tiny_registered
    entry = TASKS.entry(task)
    loads = []

    def counted(root=None):
        loads.append(root)
        return entry.obj.load(root)

    monkeypatch.setitem(TASKS._entries, task, Entry(task, dataclasses.replace(entry.obj, load=counted), "counted"))
    results = tmp_path / "results"
    # Two methods × two seeds: the pre-flight check and the four runs share one load of each.
    assert main(["run", "--methods", "linear,vpt-deep", "--tasks", task, "--backbone", backbone, "--seeds", "0,1",
                 "--epochs", "1", "--protocol", "fixed", "--results", str(results)]) == 0
    assert len(Store(results).records()) == 4
    assert len(loads) == 1
    assert _caches(results).backbones.loads == 1


def test_the_plan_checks_inputs_before_anything_runs(tiny_registered, tmp_path):
    backbone, task = tiny_registered
    base = dict(methods="linear", tasks=task, backbones=[backbone], seeds=[0], results=tmp_path / "r")
    with pytest.raises(BenchError, match="--weights .* does not exist"):
        plan_run(RunRequest(**base, weights=tmp_path / "missing.pth"))
    with pytest.raises(BenchError, match="needs --scheduler"):
        plan_run(RunRequest(**base, backend="dask"))
    (tmp_path / "file").write_text("")
    with pytest.raises(BenchError, match="is a file, not a folder"):
        plan_run(RunRequest(**{**base, "results": tmp_path / "file" / "r"}))
    with pytest.raises(BenchError, match="unknown"):
        plan_run(RunRequest(**{**base, "methods": "no-such-method"}))
    assert not (tmp_path / "r").exists()


def test_a_truncated_record_is_set_aside_by_dry_run_run_and_report_and_its_run_is_redone(
    tiny_registered, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    backbone, task = tiny_registered
    results = tmp_path / "results"
    args = ["run", "--methods", "linear", "--tasks", task, "--backbone", backbone, "--protocol", "fixed",
            "--seeds", "0,1", "--epochs", "1", "--results", str(results)]
    assert main(args) == 0
    capsys.readouterr()
    first, second = sorted((results / "runs").glob("*.json"))
    first.write_bytes(first.read_bytes()[:100])

    assert main(args + ["--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert err.count("bench: warning:") == 1 and f"set aside unreadable record {first}" in err
    assert out.count("pending") == 1 and out.count("done") == 1
    assert (results / "runs" / f"{first.name}.corrupt").exists()
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert re.search(r"\b1 run\(s\) done, 1 already finished", out) and err == ""
    assert json.loads(first.read_text())["status"] == "done"

    second.write_text("not json")
    (results / "runs" / "notes.json").write_text("[]")
    assert main(["report", "--results", str(results), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert err.count("bench: warning:") == 2 and "Traceback" not in out + err
    assert f"note: skipped unreadable record {second.name}" in _flat(out)
    assert "note: skipped unreadable record notes.json" in _flat(out)


# --------------------------------------------------------------------------------------------------------------------
# 9. The store's summary over seeds


def _record(method: str, task: str, seed: int, stage: str, test: float | None, val: float | None = None,
            status: str = "done", **hp) -> RunRecord:
    return make_record(make_spec(method, task, "micro-vit", seed, hp, stage=stage), test, val, status=status)


def test_summarise_gives_mean_and_sample_std_over_seeds_splits_variants_and_excludes_tuning(tmp_path):
    store = Store(tmp_path)
    linear = [51.0, 60.5, 73.25]
    records = [_record("linear", "digits", seed, "fixed", acc) for seed, acc in enumerate(linear)]
    records.append(_record("linear", "digits", 3, "fixed", None, status="failed"))  # failed: not counted
    vpt = {5: [40.0, 44.0], 10: [50.0, 58.0, 53.0]}
    records += [_record("vpt-deep", "digits", seed, "fixed", acc, num_prompts=n)
                for n, accs in vpt.items() for seed, acc in enumerate(accs)]
    # Tune protocol: stage-1 runs (val only) are excluded; the final runs of two tasks used different selected lrs.
    records += [_record("linear", t, 0, "tune", None, val=v, lr=lr)
                for t in ("sprites-loc", "mnist5k") for lr, v in ((0.1, 90.0), (0.01, 10.0))]
    finals = {"sprites-loc": (0.1, [70.0, 72.0]), "mnist5k": (0.01, [80.0, 81.0])}
    records += [_record("linear", t, seed, "final", acc, lr=lr) for t, (lr, accs) in finals.items()
                for seed, acc in enumerate(accs)]
    for record in records:
        store.write(record)

    frame = store.load()
    table = summarise(frame)
    rows = {(r.method, r.variant, r.task, r.stage): r for r in table.itertuples(index=False)}
    assert set(rows) == {
        ("linear", "", "digits", "fixed"),
        ("vpt-deep", "num_prompts=5", "digits", "fixed"),
        ("vpt-deep", "num_prompts=10", "digits", "fixed"),
        ("linear", "", "sprites-loc", "final"),
        ("linear", "", "mnist5k", "final"),
    }
    for key, accs in [(("linear", "", "digits", "fixed"), linear),
                      (("vpt-deep", "num_prompts=5", "digits", "fixed"), vpt[5]),
                      (("vpt-deep", "num_prompts=10", "digits", "fixed"), vpt[10]),
                      (("linear", "", "sprites-loc", "final"), finals["sprites-loc"][1])]:
        assert rows[key].n == len(accs)
        assert rows[key].test_acc == f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    # Sample (n − 1) std, not population std.
    assert statistics.stdev(linear) != pytest.approx(statistics.pstdev(linear), abs=0.005)

    # As summarise does: labels among the finished runs that report test (tuning runs do vary their lr).
    done = frame[(frame["status"] == "done") & (frame["stage"] != "tune")]
    done = done.assign(label=variant_labels(done))
    assert set(done[done["method"] == "vpt-deep"]["label"]) == {"num_prompts=5", "num_prompts=10"}
    assert set(done[(done["method"] == "linear") & (done["stage"] == "final")]["label"]) == {""}
    # Narrowed to some runs.
    some = summarise(frame, {r.id for r in records if r.spec.stage == "final"})
    assert sorted(some["task"]) == ["mnist5k", "sprites-loc"]



def test_without_seeds_a_final_stage_takes_its_recipes_final_seeds_and_seeds_given_always_win(
    tiny_registered, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")
    backbone, task = tiny_registered

    def plan(methods: str, seeds: list[int] | None):
        return plan_run(RunRequest(methods=methods, tasks=task, backbones=[backbone], seeds=seeds,
                                   results=tmp_path / "results", epochs=1, protocol="tune"))

    def finals(p) -> list:
        first = {}
        for spec in p.tuning:
            first.setdefault((spec.method, spec.task, spec.backbone), spec)
        return final_specs(first, p.seeds)

    # vpt-paper names VPT's five final seeds (tune_vtab.py:284); stage 1 keeps seed 0, the ids it always had.
    vpt = plan("vpt-deep", None)
    assert vpt.seeds is None and {s.seed for s in vpt.tuning} == {0}
    assert vpt.tuning == plan("vpt-deep", [0]).tuning
    assert [s.seed for s in finals(vpt)] == [42, 44, 82, 100, 800] and vpt.final_runs == 5
    assert [s.seed for s in finals(plan("vpt-deep", [3, 4]))] == [3, 4]
    # A recipe without final seeds, and no recipe, keep seed 0: the same runs as before the default became None.
    for methods in ("spt-deep", "linear"):
        unset, zero = plan(methods, None), plan(methods, [0])
        assert [s.run_id for s in finals(unset)] == [s.run_id for s in finals(zero)]
        assert [s.run_id for s in unset.known] == [s.run_id for s in zero.known]
    fixed = plan_run(RunRequest(methods="vpt-deep", tasks=task, backbones=[backbone], seeds=None,
                                results=tmp_path / "results", epochs=1, protocol="fixed"))
    assert [s.seed for s in fixed.fixed] == [0]
    # The CLI leaves --seeds unset when it is not given, and its dry run counts the recipe's final runs.
    assert main(["run", "--methods", "vpt-deep", "--tasks", task, "--backbone", backbone, "--epochs", "1",
                 "--protocol", "tune", "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    assert "1 selected setting(s) in 5 run(s)" in " ".join(capsys.readouterr().out.split())
