"""The grid: expand methods × tasks × backbones × hyper-parameters × seeds into runs, follow the field's protocol, and
execute the runs through joblib — local processes (loky) or a Dask cluster (and through dask-jobqueue, SLURM).

Protocol `tune` (VPT's): stage 1 trains every point of the method's search grid on train and scores it on val; the
best point per (method, task, backbone) by val accuracy (ties: the smaller learning rate) is then trained on train+val
once per seed (`--seeds`, else the recipe's final seeds: VPT's five) and scored on test. The test split is read only
in that final stage. Protocol `fixed` trains the given hyper-parameters on train, follows val, and reports test.

Each run holds a file lock named by its id while it executes, so two `bench run` processes on one results directory
never execute the same run at once; a run whose record says done is never executed again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout
from joblib import Parallel, delayed, parallel_config

from bench import BenchError, artifacts, recipes
from bench.atomic import WriteFailed
from bench.config import RunSpec
from bench.cost import SplitSizes
from bench.engine import Caches, run_with_outputs
from bench.method import METHODS
from bench.protocol import FIELDS as PROTOCOL_FIELDS
from bench.record import RunRecord
from bench.store import Store
from bench.picks import Cell, Pick, cell, read_picks, write_picks

PROTOCOLS = ("tune", "fixed")


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """`["lr=0.1,0.01", "num_prompts=5"]` -> `{"lr": ["0.1", "0.01"], "num_prompts": ["5"]}` (a comma list sweeps)."""
    sweeps: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise BenchError(f"bad --set {item!r}; expected key=value or key=v1,v2 (e.g. --set lr=0.1,0.01)")
        sweeps[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return sweeps


@dataclass(frozen=True)
class Grid:
    """What a user asked for: the axes of the grid."""

    methods: list[str]
    tasks: list[str]
    backbones: list[str]
    seeds: list[int]
    sweeps: dict[str, list[str]] = field(default_factory=dict)
    weights: str | None = None
    recipe: str = recipes.DEFAULT

    def __post_init__(self) -> None:
        fields = set().union(*(self._fields(m) for m in self.methods))
        for key in self.sweeps:
            if key not in fields:
                raise BenchError(f"no selected method has hyper-parameter {key!r}; valid: {', '.join(sorted(fields))}")
        recipes.check_recipe(self.recipe, self.methods)

    @staticmethod
    def _fields(method: str) -> set[str]:
        """What `--set` may name for `method`: its hyper-parameters and the pipeline values (`bench.protocol`)."""
        return set(METHODS.get(method).config_cls.__dataclass_fields__) | PROTOCOL_FIELDS

    def _points(self, method: str, search: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
        """Every combination of `search`, overridden by the user's sweeps for the keys this method has."""
        axes = {**search, **{k: v for k, v in self.sweeps.items() if k in self._fields(method)}}
        for values in itertools.product(*axes.values()):
            yield dict(zip(axes, values))

    def fixed_specs(self) -> list[RunSpec]:
        return self._specs(stage="fixed", seeds=self.seeds, use_search=False)

    def tuning_specs(self) -> list[RunSpec]:
        """Stage 1: the search grid on train -> val, with the first seed (as VPT tunes)."""
        return self._specs(stage="tune", seeds=self.seeds[:1], use_search=True)

    def _specs(self, stage: str, seeds: list[int], use_search: bool) -> list[RunSpec]:
        specs: list[RunSpec] = []
        for method, backbone in itertools.product(self.methods, self.backbones):
            recipe = recipes.recipe_for(method, self.recipe)
            points = {task: list(self._points(method, recipes.search_grid(method, backbone, recipe, task)
                                              if use_search else {})) for task in self.tasks}
            # Point by point, every task at each point: a grid's order whether or not a recipe's grid differs by
            # task family (VPT's VTAB grid has one learning rate more than its FGVC one).
            for index in range(max(map(len, points.values()), default=0)):
                for task in (t for t in self.tasks if index < len(points[t])):
                    specs.extend(recipes.make_spec(method, task, backbone, s, points[task][index], self.recipe,
                                                   self.weights, stage) for s in seeds)
        return list({spec.run_id: spec for spec in specs}.values())


def _group(spec: RunSpec) -> tuple[str, str, str, str | None]:
    return spec.method, spec.task, spec.backbone, spec.weights


def select_best(tuning: list[RunSpec], store: Store) -> tuple[dict[tuple, RunSpec], list[tuple]]:
    """Per (method, task, backbone, weights): the stage-1 spec with the best val accuracy, ties to the smaller lr.

    Returns the winners and the groups in which no stage-1 run finished (nothing to select from).
    """
    scored: dict[tuple, list[tuple[float, float, RunSpec]]] = {}
    for spec in tuning:
        record = store.read(spec.run_id)
        scored.setdefault(_group(spec), [])
        if record is not None and record.done:
            scored[_group(spec)].append((-record.val_acc, spec.hparams["lr"], spec))
    best = {group: min(entries, key=lambda e: e[:2])[2] for group, entries in scored.items() if entries}
    return best, [group for group, entries in scored.items() if not entries]


def final_specs(best: dict[tuple, RunSpec], seeds: list[int] | None) -> list[RunSpec]:
    """Stage 2: each selected setting once per seed; `seeds` None (no `--seeds`) takes its recipe's final seeds."""
    return [dataclasses.replace(s, seed=seed, stage="final") for s in best.values()
            for seed in recipes.final_seeds(s.recipe, seeds)]


@dataclass(frozen=True)
class RunRequest:
    """What `bench run` was asked, as typed, before any check.

    Attributes:
        methods, tasks: comma lists of names, aliases and globs.
        seeds: None when `--seeds` was not given: `recipes.DEFAULT_SEEDS`, and a final stage takes its recipe's.
        protocol: `tune` or `fixed` for every task; None: each task's own.
        epochs: overrides every run's epochs (a one-value sweep).
    """

    methods: str
    tasks: str
    backbones: list[str]
    seeds: list[int] | None
    results: Path
    sets: list[str] = field(default_factory=list)
    epochs: int | None = None
    weights: Path | None = None
    recipe: str = recipes.DEFAULT
    protocol: str | None = None
    data_root: Path | None = None
    backend: str = "loky"
    dask_address: str | None = None
    picks_file: Path | None = None  # --from-tuned


@dataclass(frozen=True)
class Plan:
    """The runs a request makes, by the field's protocol: `fixed` runs, and the `tune` protocol's stage 1, whose
    val-best setting per (method, task, backbone, weights) stage 2 trains on train+val once per seed. `bench run`
    executes it and `--dry-run` prints it, so the two never disagree.

    Attributes:
        seeds: the final stage's seeds as asked (`--seeds`); None: each selected setting's recipe's final seeds.
    """

    fixed: list[RunSpec]
    tuning: list[RunSpec]
    seeds: list[int] | None
    swept: frozenset[str] = frozenset()
    sizes: dict[str, SplitSizes] = field(default_factory=dict)
    picks: dict[Cell, Pick] = field(default_factory=dict)
    picks_file: Path | None = None

    @property
    def known(self) -> list[RunSpec]:
        """Every run known before anything executes (stage 2's depend on stage 1's results, or on `--from-tuned`
        picks)."""
        return self.fixed + self.tuning + self.picked_finals

    @property
    def selections(self) -> int:
        """The settings stage 2 will train, one per group of stage-1 runs and one per pick."""
        return len({_group(spec) for spec in self.tuning}) + len(self.picks)

    @property
    def picked_finals(self) -> list[RunSpec]:
        """Stage 2's runs of the cells `--from-tuned` covers."""
        return final_specs({key: pick.spec for key, pick in self.picks.items()}, self.seeds)

    def final_candidates(self) -> list[list[RunSpec]]:
        """Stage 2's runs before stage 1 has run: per group and seed, the settings it may be trained with."""
        groups: dict[tuple, list[RunSpec]] = {}
        for spec in self.tuning:
            groups.setdefault(_group(spec), []).append(spec)
        return [[dataclasses.replace(s, seed=seed, stage="final") for s in specs]
                for specs in groups.values() for seed in recipes.final_seeds(specs[0].recipe, self.seeds)] \
            + [[spec] for spec in self.picked_finals]

    @property
    def final_runs(self) -> int:
        """The runs stage 2 will train: each selection once per final seed of its recipe (or `--seeds`), the picks'
        included."""
        return len(self.final_candidates())


def plan_run(request: RunRequest) -> Plan:
    """Check every input before the first run, so a bad one is one line and nothing written, never a grid of failed
    records; then expand the grid by each task's protocol.

    Raises:
        BenchError: an input is missing or invalid.
    """
    from bench.data import TASKS

    if request.weights is not None and not request.weights.is_file():
        raise BenchError(f"--weights {request.weights} does not exist; pass a checkpoint file")
    if request.backend == "dask" and not request.dask_address:
        raise BenchError("--backend dask needs --scheduler tcp://HOST:PORT (a running Dask scheduler)")
    check_writable(request.results)
    method_names = METHODS.resolve(request.methods)
    task_names = TASKS.resolve(request.tasks)
    # Loaded through the caches this process's runs use (the runs of `--jobs 1`), so they are loaded once.
    caches = _caches(request.results)
    for name in request.backbones:
        # Building the backbone once reads its checkpoint as every run would: safe to unpickle, a ViT of this
        # width, keys that convert; or finds its hub or packaged weights.
        caches.backbones.hold(name, request.weights)
    sweeps = parse_sets(request.sets)
    if request.epochs is not None:
        sweeps["epochs"] = [str(request.epochs)]
    weights = str(request.weights.resolve()) if request.weights else None
    tasks_by_protocol: dict[str, list[str]] = {}
    sizes = {}
    for name in task_names:
        # Loading reads list files, not images: a missing dataset fails here, before the first run.
        task = TASKS.get(name)
        data = caches.tasks.get(task, request.data_root)
        sizes[name] = SplitSizes(len(data.train), len(data.val), len(data.test))
        tasks_by_protocol.setdefault(request.protocol or task.protocol, []).append(name)
    # Without --seeds, fixed runs and stage 1 take the default seed: the ids they always had.
    seeds = request.seeds if request.seeds is not None else list(recipes.DEFAULT_SEEDS)
    grids = {protocol: Grid(method_names, names, request.backbones, seeds, sweeps, weights, request.recipe)
             for protocol, names in tasks_by_protocol.items()}
    tuning = grids["tune"].tuning_specs() if "tune" in grids else []
    picks = _covered(read_picks(request.picks_file), tuning, request.picks_file) if request.picks_file else {}
    return Plan(
        fixed=grids["fixed"].fixed_specs() if "fixed" in grids else [],
        tuning=[spec for spec in tuning if cell(spec) not in picks],
        seeds=request.seeds,
        swept=frozenset(sweeps),
        sizes=sizes,
        picks=picks,
        picks_file=request.picks_file,
    )


def _covered(picks: dict[Cell, Pick], tuning: list[RunSpec], path: Path) -> dict[Cell, Pick]:
    """The picks of the cells this plan tunes; a file that covers none of them is a mistake worth one line."""
    cells: dict[Cell, list[RunSpec]] = {}
    for spec in tuning:
        cells.setdefault(cell(spec), []).append(spec)
    covered = {key: pick for key, pick in picks.items() if key in cells}
    if not covered:
        held = sorted({" · ".join(map(str, key[:4])) for key in picks})
        wanted = sorted({" · ".join(map(str, key[:4])) for key in cells})
        raise BenchError(f"--from-tuned {path} covers none of the (method · task · backbone · recipe) this grid "
                         f"tunes: it holds {_few(held)}; the grid tunes {_few(wanted)}")
    for key, pick in covered.items():
        # A pick stands for this grid's stage 1 only where it was tuned as this grid would tune: the values the grid
        # holds fixed (`--epochs`, `--set` of one value, the recipe's) and the pipeline must be the pick's.
        specs = cells[key]
        fixed = {k: v for k, v in specs[0].hparams.items() if all(s.hparams.get(k) == v for s in specs)}
        differ = [f"{k}={pick.spec.hparams.get(k)} (this grid: {v})" for k, v in fixed.items()
                  if pick.spec.hparams.get(k) != v]
        if pick.spec.protocol != specs[0].protocol:
            differ.append(f"pipeline {pick.spec.protocol or 'harness'} (this grid: {specs[0].protocol or 'harness'})")
        if differ:
            raise BenchError(f"--from-tuned {path}: the pick for {' · '.join(map(str, key[:4]))} was tuned with "
                             f"{', '.join(differ)}; drop --from-tuned to tune this grid, or run it as the pick was "
                             "tuned")
    return covered


def _few(names: list[str]) -> str:
    return (", ".join(names[:3]) or "nothing") + (" …" if len(names) > 3 else "")


def export_tuned(store: Store, path: Path) -> list[Pick]:
    """Write the stage-1 choice of every cell with a finished stage-1 run in `store` to `path`; returns the picks.

    The choice is the one stage 2 trained, where the store holds its final runs; otherwise it is made as stage 2
    makes it (`select_best`), among every finished stage-1 run of the cell (runs tied on val accuracy and learning
    rate, which stage 2 tells apart by the grid's order, go to the first by run id).

    Raises:
        BenchError: the store holds no finished stage-1 run.
    """
    records = [r for r in store.records() if r.done]
    tuned = [r for r in records if r.spec.stage == "tune" and r.val_acc is not None]
    if not tuned:
        raise BenchError(f"--export-tuned: {store.runs} holds no finished stage-1 (tune) run; run a grid with the "
                         "tune protocol first (bench run --protocol tune)")
    by_cell: dict[Cell, list[RunSpec]] = {}
    for record in tuned:
        by_cell.setdefault(cell(record.spec), []).append(record.spec)
    # A final run is a stage-1 setting with another seed and stage: that stage-1 run is the one stage 2 chose.
    seeds = {key: {spec.seed for spec in specs} for key, specs in by_cell.items()}
    trained = {dataclasses.replace(r.spec, seed=seed, stage="tune").run_id
               for r in records if r.spec.stage == "final" for seed in seeds.get(cell(r.spec), ())}
    picks = []
    for specs in by_cell.values():
        chosen = [spec for spec in specs if spec.run_id in trained]
        if len(chosen) == 1:
            (winner,) = chosen
        else:
            best, _ = select_best(specs, store)
            (winner,) = best.values()
        picks.append(Pick(winner, store.read(winner.run_id).val_acc, sorted(s.run_id for s in specs)))
    write_picks(path, picks, store.root)
    return picks


def check_writable(results: Path) -> None:
    """Fail now, not at the first record, when `results` cannot be created or written (nothing is created here)."""
    existing = next(p for p in [results, *results.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise BenchError(f"--results {results}: {existing} is a file, not a folder; pass --results DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchError(
            f"--results {results}: {existing} is not writable; pass --results DIR in a folder you can write"
        )


@dataclass
class PlanResult:
    """What running a plan did: every outcome, the runs whose test accuracy is the result (fixed and stage 2), and
    the stage-1 groups in which no run finished, so stage 2 had nothing to select."""

    outcomes: list[Outcome] = field(default_factory=list)
    reported: list[RunSpec] = field(default_factory=list)
    unselectable: list[tuple[str, str, str, str | None]] = field(default_factory=list)


def run_plan(plan: Plan, execution: Execution, progress: GridEvents) -> PlanResult:
    """Execute `plan`: the fixed runs, then stage 1, the selection on val, and stage 2."""
    result = PlanResult()
    if plan.fixed:
        result.outcomes += execute(plan.fixed, execution, progress, "runs").outcomes
        result.reported += plan.fixed
    if plan.tuning or plan.picks:
        best: dict[tuple, RunSpec] = {}
        if plan.tuning:
            result.outcomes += execute(plan.tuning, execution, progress, "stage 1: tune on val").outcomes
            best, result.unselectable = select_best(plan.tuning, execution.store)
        # Where each final run's setting came from, for its record: this stage 1, or the picks file.
        chosen = [(spec, {"from": "stage 1", "run": spec.run_id, "val_acc": execution.store.read(spec.run_id).val_acc})
                  for spec in best.values()]
        chosen += [(pick.spec, pick.origin(plan.picks_file)) for pick in plan.picks.values()]
        origins = {final.run_id: origin for spec, origin in chosen for final in final_specs({0: spec}, plan.seeds)}
        finals = final_specs(best, plan.seeds) + plan.picked_finals
        result.outcomes += execute(finals, execution, progress, "stage 2: train+val -> test", origins).outcomes
        result.reported += finals
    return result


@dataclass(frozen=True)
class Outcome:
    spec: RunSpec
    status: str  # done | failed | skipped (finished before) | busy (another process holds it)
    test_acc: float | None = None
    val_acc: float | None = None
    error: str | None = None
    artifact_bytes: int = 0  # what the run's artifacts take on disk (runs executed here)


class GridEvents:
    """What a grid reports while it runs; the CLI renders it. Epoch events arrive only for in-process runs."""

    def grid_started(self, title: str, total: int, skipped: int) -> None: ...

    def run_started(self, spec: RunSpec) -> None: ...

    def epoch(self, spec: RunSpec, epoch: int, epochs: int, loss: float, val_acc: float | None) -> None: ...

    def run_finished(self, outcome: Outcome) -> None: ...


@dataclass(frozen=True)
class Execution:
    """How runs execute: where, on what, how many at once."""

    store: Store
    device: str = "cpu"
    jobs: int = 1
    backend: str = "loky"  # loky | dask
    dask_address: str | None = None  # the Dask scheduler's address, tcp://HOST:PORT
    data_root: Path | None = None
    retry_failed: bool = False
    retry_artifacts: bool = False  # rerun done runs whose artifacts are missing or corrupt (`artifacts.missing`)
    save_full: bool = False  # keep the learned tensors of runs that learn the whole backbone (full fine-tuning)

    def finished(self, spec: RunSpec) -> bool:
        return self.leaves(self.store.read(spec.run_id))

    def leaves(self, record: RunRecord | None, hash_files: bool = True) -> bool:
        """Whether a grid leaves the run with this record as it is: done (with whole artifacts, under
        --retry-artifacts), or failed without --retry-failed. Without `hash_files` artifacts are checked by size only
        (`artifacts.missing`), as a dry run does."""
        if record is None:
            return False
        if record.done:
            return not (self.retry_artifacts and artifacts.missing(self.store.root, record, hash_files))
        return not self.retry_failed


@dataclass
class GridResult:
    outcomes: list[Outcome] = field(default_factory=list)


def execute(specs: list[RunSpec], execution: Execution, progress: GridEvents, title: str = "runs",
            origins: dict[str, dict[str, Any]] | None = None) -> GridResult:
    """Run every spec not already finished; each run writes its own record (done or failed) where it executes.
    `origins`: by run id, where a final run's hyper-parameters came from (its record's `hparams_from`)."""
    pending = [spec for spec in specs if not execution.finished(spec)]
    progress.grid_started(title, len(specs), len(specs) - len(pending))
    result = GridResult([Outcome(spec, "skipped") for spec in specs if spec not in pending])
    if not pending:
        return result
    in_process = execution.backend == "loky" and execution.jobs == 1
    threads = None if execution.backend == "dask" else threads_per_worker(execution.jobs)
    calls = (
        delayed(_execute_one)(spec, execution, threads, progress if in_process else None,
                              (origins or {}).get(spec.run_id))
        for spec in pending
    )
    with _parallel_backend(execution):
        # joblib runs a single job in the calling process; on Dask, every pending run is a job for the cluster to
        # queue, even when the cluster has a single worker thread.
        n_jobs = max(2, len(pending)) if execution.backend == "dask" else execution.jobs
        for outcome in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(calls):
            result.outcomes.append(outcome)
            progress.run_finished(outcome)
    return result


def threads_per_worker(jobs: int) -> int:
    """Torch threads for each of `jobs` local workers: their share of the cores this process may run on (its CPU
    affinity, which a container or `taskset` may set below the machine's count), since more threads than cores only
    thrash; and never more than this process was given (OMP_NUM_THREADS / torch.set_num_threads): a user's limit on
    a shared machine holds."""
    import torch

    return min(max(1, len(os.sched_getaffinity(0)) // jobs), torch.get_num_threads())


@contextlib.contextmanager
def _parallel_backend(execution: Execution) -> Iterator[None]:
    if execution.backend == "loky":
        yield
        return
    if not execution.dask_address:
        raise BenchError("--backend dask needs --scheduler tcp://HOST:PORT (a running Dask scheduler)")
    try:
        from dask.distributed import Client
    except ImportError:
        raise BenchError("--backend dask needs dask.distributed; install it with pip install -e '.[dask]'") from None
    try:
        client = Client(execution.dask_address, timeout="10s")
    except OSError as exc:
        raise BenchError(f"cannot reach the Dask scheduler at {execution.dask_address}: {exc}") from None
    with client, parallel_config(backend="dask"):
        yield


def _execute_one(spec: RunSpec, execution: Execution, threads: int | None, hooks: GridEvents | None,
                 origin: dict[str, Any] | None = None) -> Outcome:
    lock = FileLock(str(execution.store.root / "locks" / f"{spec.run_id}.lock"))
    (execution.store.root / "locks").mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return Outcome(spec, "busy")
    try:
        # Re-read under the lock: another process may have finished this run since the grid was planned.
        if execution.finished(spec):
            return Outcome(spec, "skipped")
        # A worker process (loky, a Dask worker) starts with empty registries: register what the CLI registers.
        import bench.methods  # noqa: F401
        import bench.tasks  # noqa: F401

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if hooks is not None:
            hooks.run_started(spec)
        on_epoch = (lambda e, n, loss, acc: hooks.epoch(spec, e, n, loss, acc)) if hooks is not None else None
        try:
            record, outputs = run_with_outputs(spec, device=_device(execution), on_epoch=on_epoch,
                                               data_root=execution.data_root, caches=_caches(execution.store.root))
            record = dataclasses.replace(record, hparams_from=origin)
            # Written before the record that names them: a run killed in between leaves no record, so it reruns.
            record = artifacts.keep(execution.store.root, record, outputs.learned, outputs.initial,
                                    outputs.predictions, outputs.whole_backbone, execution.save_full)
        except WriteFailed:
            raise  # the disk's failure, not the run's: it stops the grid, and a rerun runs this run again
        except Exception as exc:  # any failure of one run is recorded; the grid goes on
            error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            record = RunRecord.failed(spec, error, "".join(traceback.format_exc(limit=-6)))
        execution.store.write(record)
        return Outcome(spec, record.status, record.test_acc, record.val_acc, record.error,
                       artifacts.disk_bytes(record))
    finally:
        lock.release()


def _device(execution: Execution) -> str:
    """`cuda` with several jobs: each worker process claims a GPU slot for its lifetime (see `claim_gpu`)."""
    if execution.device != "cuda" or execution.jobs <= 1:
        return execution.device
    import torch

    if _WORKER.gpu is None:
        _WORKER.gpu = claim_gpu(execution.store.root / "locks", torch.cuda.device_count(), execution.jobs)
    return _WORKER.gpu[1] if _WORKER.gpu is not None else execution.device


def _caches(results: Path) -> Caches:
    """The caches of `results` this worker process holds; one results folder's at a time, since a worker serves
    one `bench run` (the held features and backbones of another folder would only take memory)."""
    if _WORKER.caches is None or _WORKER.caches[0] != results:
        _WORKER.caches = (results, Caches.for_results(results))
    return _WORKER.caches[1]


def claim_gpu(locks: Path, gpus: int, jobs: int) -> tuple[FileLock, str] | None:
    """The first free (slot, GPU) in slot-major order, so J workers on G GPUs spread evenly: with J ≤ G each holds a
    GPU of its own, as before; with J > G (one GPU and --jobs 4, say) the GPUs are shared, ⌈J/G⌉ workers each at
    most, since small runs leave most of a GPU idle. The lock is held until the worker process exits."""
    locks.mkdir(parents=True, exist_ok=True)
    for slot in range(max(1, -(-jobs // max(1, gpus)))):
        for index in range(gpus):
            claim = FileLock(str(locks / f"gpu{index}.slot{slot}.lock"))
            try:
                claim.acquire(timeout=0)
            except Timeout:
                continue
            return claim, f"cuda:{index}"
    return None


@dataclass
class _Worker:
    """What a worker process (loky's, a Dask worker, or this one with one job) keeps across the runs it executes.
    Only this module reads or writes it.

    Attributes:
        gpu: the GPU it claimed, with the lock that holds it until the process exits.
        caches: the results folder it runs for, and the caches its runs share.
    """

    gpu: tuple[FileLock, str] | None = None
    caches: tuple[Path, Caches] | None = None


_WORKER = _Worker()
