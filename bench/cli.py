"""`bench`: run the grid, report, re-score and export runs, check for regressions, measure performance, pre-train.

Every error a user can cause ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import TextColumn
from rich.table import Table

from bench import BenchError
from bench.backbone import DEFAULT_BACKBONE

if TYPE_CHECKING:
    from bench.config import RunSpec
    from bench.cost import CostModel, StageEstimate
    from bench.scheduler import Execution, Plan
    from bench.store import Store
    from bench.tuned import Rescored

# The first table a new user sees shows what the harness is for: a prompt method against its two baselines (raw
# pixels; a linear probe of the frozen backbone) on a micro task where the pre-trained backbone matters (counting
# shapes: pixels score near chance). One task and one prompt method keep it to about 12 minutes on 2 CPU cores, nearly
# all of it the prompt method's 120 epochs (README); `--tasks micro` runs all five tasks.
DEFAULT_METHODS = "pixels,linear,spt-deep"
DEFAULT_TASKS = "shapes-count"


def _registries() -> dict[str, Any]:
    import bench.methods  # noqa: F401  (registers the methods)
    import bench.tasks  # noqa: F401  (registers the tasks)
    from bench.backbone import BACKBONES
    from bench.data import TASKS
    from bench.datafetch import FETCHES
    from bench.method import METHODS
    from bench.recipes import RECIPES

    return {"methods": METHODS, "tasks": TASKS, "backbones": BACKBONES, "recipes": RECIPES, "sources": FETCHES}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed, e.g. --seeds 0")
    return seeds


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of hours such as 2 or 0.5, got {text!r}")
    return hours


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, then exit 2, as for every other user error
        raise BenchError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train and evaluate methods × tasks × seeds; one JSON record per run")
    run.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list, aliases, globs (default {DEFAULT_METHODS})")
    run.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma list, aliases, globs (default {DEFAULT_TASKS})")
    run.add_argument("--backbone", default=DEFAULT_BACKBONE,
                     help=f"comma list of registered names or timm ViTs (default {DEFAULT_BACKBONE})")
    run.add_argument("--weights", type=Path, help="local checkpoint: timm/.safetensors, .npz, MAE or MoCo-v3 .pth")
    run.add_argument("--seeds", type=_seeds, help="comma list of seeds (default 0; a tune protocol's final stage: "
                     "its recipe's final seeds, e.g. vpt-paper's five, else 0)")
    run.add_argument("--epochs", type=_positive, help="override every run's epochs")
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")
    run.add_argument("--recipe", default="default", metavar="NAME",
                     help="named reference recipe (`bench list recipes`); `default`: each method's own (spt-paper "
                          "for SPT, vpt-paper for VPT); `none`: the methods' config defaults")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE[,VALUE..]",
                     help="hyper-parameter over the recipe; a comma list sweeps it (repeatable)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: cuda when torch "
                     "sees a GPU, else cpu; records say which ran)")
    run.add_argument("--data-root", type=Path, help="folder holding FGVC/VTAB datasets (default $BENCH_DATA)")
    run.add_argument("--protocol", choices=["tune", "fixed"],
                     help="tune: search on val, then train(+val) -> test over seeds; fixed: the given hyper-parameters "
                          "(default: each task's own, tune for FGVC/VTAB, fixed for the micro suite)")
    run.add_argument("--jobs", type=_positive, default=1, help="local worker processes (default 1)")
    run.add_argument("--backend", choices=["loky", "dask"], default="loky", help="joblib backend (default loky)")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler address for --backend dask")
    run.add_argument("--dry-run", action="store_true",
                     help="print the grid, what is already done and its predicted hours (docs/cost.md); run nothing")
    run.add_argument("--budget", type=_hours, metavar="HOURS",
                     help="refuse (exit 2, nothing run) a grid predicted to need more device-hours (docs/cost.md)")
    run.add_argument("--from-tuned", type=Path, metavar="FILE", help="skip stage 1 for the (method, task, backbone, "
                     "recipe) FILE covers and train stage 2 with its picks (bench report --export-tuned FILE)")
    run.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    run.add_argument("--retry-artifacts", action="store_true",
                     help="rerun finished runs whose artifacts are missing or corrupt (or that predate artifacts)")
    run.add_argument("--save-full", action="store_true",
                     help="keep the learned tensors of runs that learn the whole backbone (full fine-tuning); "
                          "by default they keep only their predictions")

    evaluate = sub.add_parser("eval", help="re-score runs' saved parameters and check the accuracy they reproduce")
    evaluate.add_argument("run_ids", metavar="RUN_ID", nargs="*", help="runs' ids (`bench run --dry-run` lists them)")
    evaluate.add_argument("--tasks", help="also every finished run of these tasks in RESULTS that kept its learned "
                          "tensors (comma list, aliases, globs), e.g. after fetching the data again")
    evaluate.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")
    evaluate.add_argument("--split", choices=["test", "val"], default="test", help="split to score (default test)")
    evaluate.add_argument("--data-root", type=Path, help="folder holding FGVC/VTAB datasets (default $BENCH_DATA)")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    export = sub.add_parser("export", help="write a run's tuned parameters in another library's layout")
    export.add_argument("run_id", metavar="RUN_ID", help="the run's id (`bench run --dry-run` lists them)")
    export.add_argument("out", metavar="DIR", type=Path, help="new folder to write")
    export.add_argument("--format", choices=["peft"], required=True,
                        help="peft: `PeftModel.from_pretrained(vit, DIR)` loads it (peft-built methods only)")
    export.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")

    pretrain = sub.add_parser("pretrain", help="pre-train the micro backbone offline (masked autoencoder)")
    pretrain.add_argument("objective", choices=["mae"], help="pre-training objective")
    pretrain.add_argument("--out", type=Path, default=Path("bench/weights/micro_mae.safetensors"),
                          help="where to write the encoder (safetensors; a .log.json goes beside it)")
    pretrain.add_argument("--epochs", type=_positive, help="override the recipe's epochs")
    pretrain.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    pretrain.add_argument("--trained-pos-embed", action="store_true",
                          help="train the encoder's position embedding from its sine-cosine start (default: fixed, as "
                               "MAE keeps it and as the shipped weights were made); the first shipped weights' recipe")

    report = sub.add_parser("report", help="paper-style tables (LaTeX, Markdown, CSV) and figures from the records")
    report.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")
    report.add_argument("--out", type=Path, help="output directory (default RESULTS/report)")
    report.add_argument("--format", default="tex,md,csv", help="comma list of tex, md, csv (default all)")
    report.add_argument("--published", action="store_true",
                        help="print published numbers (bench/report/published.csv) beside this run's: paper, this run, difference")
    report.add_argument("--export-tuned", type=Path, metavar="FILE", help="instead of the report: write the stage-1 "
                        "pick per (method, task, backbone, recipe), its val accuracy and run ids, for --from-tuned")
    report.add_argument("--cost", nargs="?", const="records", choices=["records", "calibration"],
                        help="instead of the report: each finished run's recorded seconds beside the cost model's "
                        "prediction, from the other records and RESULTS/calibration.json (records, the default) or "
                        "from the calibration alone, as a dry run before the runs predicted them")
    report.add_argument("--compare", metavar="A,B", help="paired difference A − B over tasks and seeds, bootstrap "
                        "CI, a Bayesian signed-rank test over tasks and, from saved predictions, McNemar's test and a "
                        "bootstrap image by image; A, B: methods or variants as the summary labels them")
    report.add_argument("--rope", type=float, metavar="POINTS", help="with --compare: the region of practical "
                        "equivalence of the Bayesian test, in accuracy points (default 1)")
    report.add_argument("--rank", action="store_true", help="rank methods over tasks per backbone: Friedman test, "
                        "Nemenyi post-hoc, critical-difference diagram (ranks.*, critical_difference.pdf/png)")

    check = sub.add_parser("check", help="CI regression check: rerun a small fixed subset, compare with a baseline")
    check.add_argument("--baseline", type=Path, default=None, help="baseline file (default results/baselines/check.json)")
    check.add_argument("--tolerance", type=float, default=None, help="allowed drop in test accuracy, points (default 3)")
    check.add_argument("--update", action="store_true", help="rerun the default subset and rewrite the baseline")
    check.add_argument("--results", type=Path, help="keep the check's records here (default: a temporary directory)")

    perf = sub.add_parser("perf", help="measure harness overhead and fast paths as ratios against their slow twins")
    perf.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"backbone to measure (default {DEFAULT_BACKBONE})")
    perf.add_argument("--out", type=Path, help="JSON output (default results/perf.json; with --calibrate "
                      "results/calibration.json, which bench run --results results reads)")
    perf.add_argument("--calibrate", action="store_true", help="instead of the figures: one short run per method "
                      "kind (a few minutes on 2 CPU cores with the micro backbone), the basis of bench run --dry-run's "
                      "estimate")
    perf.add_argument("--quick", action="store_true", help="fewer repeats, epochs and k-means layers (about half the time)")
    perf.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto); on a GPU the "
                      "GPU figures are measured too")

    lst = sub.add_parser("list", help="show registered methods, tasks, backbones, recipes and data sources")
    lst.add_argument("what", nargs="?", choices=["methods", "tasks", "backbones", "recipes", "sources"],
                     help="one registry (default all)")
    data = sub.add_parser("data", help="fetch datasets, inspect them on disk")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    fetch = data_sub.add_parser("fetch", help="download a benchmark's data into a layout bench detects, verify, "
                                              "check and fingerprint it; never over data in place")
    fetch.add_argument("source", metavar="SOURCE", help="vtab-1k or fgvc (`bench list` shows the data sources)")
    fetch.add_argument("--data-root", type=Path, help="folder to put the data in (default $BENCH_DATA; created)")
    fetch.add_argument("--tasks", help="only these of the source's tasks (comma list, aliases, globs; default all)")
    fetch.add_argument("--jobs", type=_positive, default=None, help="threads for the check after it (default 8)")
    check = data_sub.add_parser("check", help="find each task's files, check splits, labels and images")
    check.add_argument("--data-root", type=Path, help="folder holding FGVC/VTAB datasets (default $BENCH_DATA)")
    check.add_argument("--tasks", default="fgvc,vtab", help="comma list, aliases, globs (default fgvc,vtab)")
    check.add_argument("--jobs", type=_positive, default=None,
                       help="threads reading and decoding images (default 8)")
    check.add_argument("--deep", action="store_true",
                       help="also print each task's content fingerprint (files' sha256, besides list, sizes, labels)")
    return parser


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    """Exit 0 when every run scored reproduced its record, 1 when one did not, 2 when one could not be scored (or
    nothing was selected)."""
    from bench.store import warn_stderr
    from bench.engine import Caches
    from bench.tuned import rescore, runs_of_tasks

    if not args.run_ids and not args.tasks:
        raise BenchError("bench eval needs runs to score: RUN_ID ... (`bench run --dry-run` lists ids) or --tasks T "
                         "(every finished run of T in --results)")
    run_ids = list(dict.fromkeys(args.run_ids))
    left_out: list[str] = []
    if args.tasks:
        records, left_out = runs_of_tasks(args.results, _registries()["tasks"].resolve(args.tasks), args.split)
        run_ids += [record.id for record in records if record.id not in run_ids]
    for line in left_out:
        console.print(line, highlight=False, soft_wrap=True)
    if not run_ids:
        raise BenchError(f"--tasks {args.tasks}: no finished run in {args.results} kept the tensors to score; run "
                         "them first (bench run), or pass --results")
    device = resolve_device(args.device)
    caches = Caches()  # each task and backbone is loaded once for all the runs
    outcomes: Counter[str] = Counter()
    unscored = "could not be scored (the warnings above)"
    for run_id in run_ids:
        try:
            r = rescore(args.results, run_id, args.split, args.data_root, device, warn_stderr, caches)
        except BenchError as exc:
            if len(run_ids) == 1:
                raise
            # One run's damaged files or missing data must not cost the others their scores.
            warn_stderr(str(exc) if run_id in str(exc) else f"run {run_id}: {exc}")
            outcomes[unscored] += 1
            continue
        outcome, line = _rescored_line(run_id, r)
        outcomes[outcome] += 1
        console.print(line, highlight=False)
    if len(run_ids) > 1:
        console.print(f"{len(run_ids)} run(s): " + ", ".join(f"{n} {what}" for what, n in outcomes.items()),
                      highlight=False)
    return 1 if outcomes["NOT reproduced"] else 2 if outcomes[unscored] else 0


def _rescored_line(run_id: str, r: Rescored) -> tuple[str, str]:
    """The outcome of a re-scored run (reproduced, NOT reproduced, nothing recorded to compare) and its line."""
    spec = r.spec
    label = f"{run_id} ({spec.method}, {spec.task}, seed {spec.seed}) {r.split}"
    changed = "" if r.changed is None else f", {r.changed} of {r.images} test predictions differ from the saved ones"
    if r.recorded_on is not None and r.recorded_on.split(":")[0] != r.scored_on.split(":")[0]:
        changed += f" (the run ran on {r.recorded_on}, this on {r.scored_on}: pass --device to score where it ran)"
    if r.recorded is None:
        return "scored with no recorded accuracy to compare", (
            f"{label}: {r.accuracy:.2f}% over {r.images} images; its record holds no {r.split} accuracy to compare "
            f"with{changed}")
    verdict = "reproduced" if r.reproduced else "NOT reproduced"
    return verdict, (f"{label}: {r.accuracy:.2f}% now, {r.recorded:.2f}% recorded: {verdict} (tolerance one image, "
                     f"{r.tolerance:.2f} points){changed}")


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from bench.tuned import export_peft

    written = export_peft(args.results, args.run_id, args.out)
    console.print(f"wrote {', '.join(p.name for p in written)} to {args.out}; load with "
                  f"PeftModel.from_pretrained(vit, {str(args.out)!r}) (see docs/artifacts.md)", highlight=False)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    _registries()  # the task families declare the report's tables: their groups, labels and task order
    if args.export_tuned is not None:
        from bench.scheduler import export_tuned
        from bench.store import Store

        picks = export_tuned(Store(args.results), args.export_tuned)
        console.print(f"wrote {args.export_tuned}: {len(picks)} pick(s) from the stage-1 runs of {args.results}",
                      highlight=False)
        return 0
    if args.cost is not None:
        return _cost_check(args.results, args.cost == "records", console)
    from bench.report import ROPE, build_report, to_rich

    pair = None
    if args.compare is not None:
        # A variant's label lists its settings as "a=1, b=2": only a comma without a space separates the two names.
        pair = tuple(name.strip() for name in re.split(r",(?! )", args.compare))
        if len(pair) != 2 or not all(pair):
            raise BenchError(f"--compare {args.compare!r}: expected two methods, e.g. --compare spt-deep,vpt-deep")
    if args.rope is not None and pair is None:
        raise BenchError(f"--rope {args.rope:g}: the region of practical equivalence is for the Bayesian comparison; "
                         "pass --compare A,B with it")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    rope = ROPE if args.rope is None else args.rope
    report = build_report(args.results, args.out or args.results / "report", formats, pair, args.published,
                          args.rank, rope)
    console.print(to_rich(report.summary))
    if report.published is not None:
        console.print(to_rich(report.published))
    for ranking in report.rankings:
        console.print(f"rank test on {ranking.describe()}", highlight=False, markup=False)
    for note in report.notes:
        console.print(f"note: {note}", style="dim", highlight=False, markup=False)
    for path in report.paths:
        console.print(f"wrote {path}", highlight=False)
    for result in (report.comparison, report.bayesian, report.per_image):
        if result is not None:
            console.print(result.describe(), highlight=False, markup=False)
    return 0


def _cost_check(results: Path, others: bool, console: Console) -> int:
    from bench.cost import CALIBRATION, check_records, check_summary, read_calibration
    from bench.store import Store

    calibration, _ = read_calibration(results / CALIBRATION)
    checks = check_records(Store(results).records(), calibration, leave_one_out=others)
    table = Table(title=f"cost model against the records of {results} (seconds of the timed phases)",
                  title_justify="left")
    for column in ("run", "stage", "recorded s", "predicted s", "error", "basis"):
        table.add_column(column)
    for c in checks:
        predicted = "–" if c.prediction.seconds is None else f"{c.prediction.seconds:.1f}"
        error = "–" if c.error is None else f"{c.error:+.0%}"
        basis = c.prediction.why or f"{len(c.prediction.sources)} observation(s)"
        table.add_row(c.record.spec.label, c.record.spec.stage, f"{c.recorded:.1f}", predicted, error, basis)
    console.print(table)
    console.print(check_summary(checks), highlight=False, soft_wrap=True)
    return 0


def cmd_check(args: argparse.Namespace, console: Console) -> int:
    _registries()
    from bench.check import DEFAULT_BASELINE, DEFAULT_TOLERANCE, run_check
    from bench.progress import GridDisplay

    baseline = args.baseline or DEFAULT_BASELINE
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    if tolerance < 0:
        raise BenchError(f"--tolerance {tolerance} is negative; pass the allowed drop in points, e.g. --tolerance 3")
    with GridDisplay(console) as display:
        rows = run_check(baseline, tolerance, args.update, display, args.results)
    table = Table(title=f"bench check against {baseline} (tolerance {tolerance:g} points)", title_justify="left")
    for column in ("run", "baseline", "now", "delta", "status"):
        table.add_column(column)
    styles = {"ok": "green", "new": "cyan", "regressed": "red", "failed": "red"}
    for row in rows:
        cells = [f"{v:.2f}" if v is not None else "–" for v in (row.baseline, row.now)]
        delta = f"{row.delta:+.2f}" if row.delta is not None else "–"
        table.add_row(row.label, *cells, delta, row.status, style=styles[row.status])
    console.print(table)
    if args.update:
        console.print(f"baseline written to {baseline}", highlight=False)
        return 0
    bad = [row for row in rows if row.status in ("regressed", "failed")]
    console.print(f"{len(bad)} of {len(rows)} run(s) regressed or failed" if bad else "no regression", highlight=False)
    return 1 if bad else 0


def cmd_perf(args: argparse.Namespace, console: Console) -> int:
    import json
    import os

    import torch

    from bench.backbone import backbone_entry
    from bench.engine import provenance
    from bench.perf import NOISE_MARGIN, exit_status, run_perf

    _registries()
    backbone_entry(args.backbone)
    device = resolve_device(args.device)
    if args.calibrate:
        return _calibrate(args, device, console)
    args.out = args.out or Path("results/perf.json")
    figures = run_perf(args.backbone, args.quick, lambda name: console.print(f"measuring {name} …", style="dim"),
                       device)
    table = Table(title=f"bench perf · {args.backbone} · a miss within {NOISE_MARGIN:.0%} of its target passes as noise",
                  title_justify="left")
    for column in ("figure", "measured", "ratio", "target", "status", "note"):
        table.add_column(column)
    styles = {"pass": "green", "pass (noise)": "yellow", "fail": "red", "info": "dim"}
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.3g}"
        table.add_row(f.name, f.measured, ratio, f.target, f.status, f.note, style=styles[f.status])
    console.print(table)
    machine = {**provenance(torch.device(device)), "load_average": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backbone": args.backbone, "quick": args.quick, "noise_margin": NOISE_MARGIN,
                                    "machine": machine, "figures": [f.to_dict() for f in figures]}, indent=1))
    console.print(f"wrote {args.out}", highlight=False)
    return exit_status(figures)


def _calibrate(args: argparse.Namespace, device: str, console: Console) -> int:
    from bench.cost import CALIBRATION, write_calibration
    from bench.perf import calibrate

    out = args.out or Path("results") / CALIBRATION
    observations = calibrate(args.backbone, device, lambda name: console.print(f"measuring {name} …", style="dim"))
    table = Table(title=f"bench perf --calibrate · {args.backbone} · seconds per image", title_justify="left")
    for column in ("run", "kind", "train", "val", "test", "setup"):
        table.add_column(column)
    for o in observations:
        table.add_row(o.source, o.kind, *(f"{o.seconds[p]:.3g}" if p in o.seconds else "–"
                                          for p in ("train", "val", "test", "setup")))
    console.print(table)
    write_calibration(out, observations)
    console.print(f"wrote {out} ({observations[0].device if observations else 'nothing measured'})", highlight=False)
    return 0


def cmd_pretrain(args: argparse.Namespace, console: Console) -> int:
    import dataclasses
    import json

    from bench.backbone import sha256_file
    from bench.pretrain import MAERecipe, pretrain_mae, save_encoder

    recipe = MAERecipe(seed=args.seed, fixed_pos_embed=not args.trained_pos_embed)
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    with RichProgress(*RichProgress.get_default_columns(), TextColumn("{task.fields[status]}"), console=console,
                      disable=not console.is_terminal) as bar:
        task = bar.add_task("MAE pre-training", total=recipe.epochs, status="")

        def on_epoch(epoch: int, epochs: int, loss: float, seconds: float) -> None:
            bar.update(task, completed=epoch, status=f"loss {loss:.4f}")
            if not console.is_terminal:
                console.print(f"epoch {epoch}/{epochs} loss {loss:.4f} ({seconds:.0f} s)", highlight=False)

        encoder, log = pretrain_mae(recipe, on_epoch)
    save_encoder(encoder, args.out)
    log["sha256"] = sha256_file(args.out)
    log_path = args.out.with_suffix(".log.json")
    log_path.write_text(json.dumps(log, indent=1))
    console.print(f"wrote {args.out} (sha256 {log['sha256'][:12]}…) and {log_path}")
    return 0


def cmd_data(args: argparse.Namespace, console: Console) -> int:
    from bench.datacheck import DEFAULT_JOBS, check_tasks, render

    if args.data_command == "fetch":
        return cmd_data_fetch(args, console)
    names = _registries()["tasks"].resolve(args.tasks)
    with _image_progress(console) as on_image:
        checks = check_tasks(names, args.data_root, args.jobs or DEFAULT_JOBS, on_image)
    render(checks, console, deep=args.deep)
    return 0 if all(check.usable for check in checks) else 1


def cmd_data_fetch(args: argparse.Namespace, console: Console) -> int:
    """Fetch, then check what was placed (its fingerprints are written beside it) and say what happened per task."""
    from bench.data import TASKS
    from bench.datacheck import DEFAULT_JOBS, render
    from bench.datafetch import FETCHES, IN_PLACE, MANUAL, PLACED, check_placed, fetch, resolve_fetch_root, \
        summary_line

    _registries()
    source = FETCHES.get(args.source)
    tasks = TASKS.resolve(args.tasks) if args.tasks else None
    root = resolve_fetch_root(args.data_root)
    placements = fetch(args.source, root, tasks)
    with _image_progress(console) as on_image:
        checks = check_placed(placements, root, args.jobs or DEFAULT_JOBS, on_image)
    if checks:
        render(checks, console)
    for placement in placements:
        style = {PLACED: "green", IN_PLACE: "dim", MANUAL: "yellow"}.get(placement.status, "red")
        console.print(summary_line(placement), style=style, highlight=False, markup=False, soft_wrap=True)
    ready = sum(p.status in (PLACED, IN_PLACE) for p in placements)
    console.print(f"{ready} of {len(placements)} {args.source} task(s) ready under {root}"
                  + (f"; fingerprints written beside the {len(checks)} placed" if checks else ""), highlight=False)
    return 0 if all(check.usable for check in checks) and ready == len(tasks or source.tasks) else 1


@contextmanager
def _image_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per task while `bench data check` reads its images (on a terminal)."""
    with RichProgress(*RichProgress.get_default_columns(), console=console, transient=True,
                      disable=not console.is_terminal) as bar:
        bars: dict[str, Any] = {}

        def on_image(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = bar.add_task(f"{task}: reading images", total=total)
            bar.update(bars[task], completed=done)

        yield on_image


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    registries = _registries()
    for kind in [args.what] if args.what else list(registries):
        registry = registries[kind]
        table = Table(title=kind, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        for alias, targets in registry.aliases().items():
            table.add_row(alias, f"alias: {', '.join(targets)}", style="dim")
        console.print(table)
        if kind == "recipes":
            _print_recipes(registry, console)
    return 0


def _print_recipes(registry: Any, console: Console) -> None:
    """Every value a recipe sets, per scope (task family and/or backbone objective), its departures from the
    reference code, and the reference file each value comes from."""
    from bench.recipes import DEFAULT_SEEDS

    for entry in registry.entries():
        recipe = entry.obj
        seeds = ", ".join(map(str, recipe.final_seeds or DEFAULT_SEEDS)) + " unless --seeds"
        table = Table(title=f"{entry.name}: applies to {', '.join(recipe.methods)}; default for "
                            f"{', '.join(recipe.default_for) or 'none'}; warm-up {recipe.warmup_fraction} of epochs; "
                            f"final-stage seeds {seeds}", title_justify="left")
        for column in ("scope", "hyper-parameters", "tune grid", "pipeline (others: the harness's)"):
            table.add_column(column)
        for scope in dict.fromkeys([*recipe.values, *recipe.search, *recipe.protocol]):
            table.add_row(scope, *(", ".join(f"{k}={v}" for k, v in part.get(scope, {}).items())
                                   for part in (recipe.values, recipe.search, recipe.protocol)))
        for method, scopes in recipe.method_values.items():
            for scope, values in scopes.items():
                table.add_row(f"{method} on {scope}", ", ".join(f"{k}={v}" for k, v in values.items()), "", "")
        if recipe.lr_factors:
            table.add_row("*", "", f"lr=each method's lr × {', '.join(f'{f:g}' for f in recipe.lr_factors)}", "")
        console.print(table)
        for what, source in recipe.sources.items():
            console.print(f"  {what}: {source}", highlight=False, style="dim")
        for departure in recipe.departures:
            console.print(f"  departure: {departure}", highlight=False)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    _registries()
    from bench.progress import GridDisplay
    from bench.scheduler import Execution, RunRequest, plan_run, run_plan
    from bench.store import Store, summarise

    device = resolve_device(args.device)
    plan = plan_run(RunRequest(
        methods=args.methods, tasks=args.tasks, seeds=args.seeds, results=args.results, sets=args.sets,
        backbones=[name.strip() for name in args.backbone.split(",") if name.strip()], epochs=args.epochs,
        weights=args.weights, recipe=args.recipe, protocol=args.protocol, data_root=args.data_root,
        backend=args.backend, dask_address=args.scheduler, picks_file=args.from_tuned,
    ))
    store = Store(args.results)
    execution = Execution(
        store, device, args.jobs, args.backend, args.scheduler, args.data_root, args.retry_failed,
        args.retry_artifacts, args.save_full,
    )
    if args.dry_run or args.budget is not None:
        stages, model = _estimate(plan, execution)
        if args.budget is not None:
            _check_budget(stages, model, device, args.budget)
    if args.dry_run:
        return _dry_run(plan, store, console, stages, model, device)

    with GridDisplay(console) as display:
        result = run_plan(plan, execution, display)
    for group in result.unselectable:
        console.print(f"no stage-1 run of {' · '.join(map(str, group[:3]))} finished; nothing to select")
    outcomes = result.outcomes
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "busy", "failed")}
    from bench.artifacts import FOLDER, human_bytes

    kept = sum(o.artifact_bytes for o in outcomes)
    console.print(
        f"{counts['done']} run(s) done, {counts['skipped']} already finished, {counts['busy']} running elsewhere, "
        f"{counts['failed']} failed; records in {store.runs}"
        + (f", artifacts in {store.root / FOLDER} ({human_bytes(kept)} written)" if kept else ""), highlight=False,
    )
    table = summarise(store.load(), {spec.run_id for spec in result.reported})
    if not table.empty:
        console.print(_frame_table(table, "test accuracy (%): mean ± sample std over seeds"))
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in failed:
        console.print(f"failed {outcome.spec.label}: {outcome.error}", style="red", highlight=False, markup=False)
    if failed:
        console.print("rerun with --retry-failed to try the failed runs again", highlight=False)
    return 1 if failed else 0


def _estimate(plan: Plan, execution: Execution) -> tuple[list[StageEstimate], CostModel]:
    """The plan's predicted cost on the execution's device, stage by stage, from the store's records and its
    calibration file; the runs the grid would leave as they are (`Execution.leaves`) cost nothing."""
    import torch

    from bench.cost import CALIBRATION, CostModel, Estimator, base_tokens, observations_of, read_calibration
    from bench.engine import CODE_COMMIT, provenance
    from bench.scheduler import threads_per_worker

    calibration = execution.store.root / CALIBRATION
    calibrated, day = read_calibration(calibration)
    records = execution.store.records()
    model = CostModel(calibrated + observations_of(records), provenance(torch.device(execution.device))["device"],
                      threads_per_worker(execution.jobs),
                      {b: base_tokens(b) for b in {s.backbone for s in plan.known}},
                      commit=CODE_COMMIT, calibration=calibration, calibrated_on=day)
    estimator = Estimator(model, plan.sizes, {r.id for r in records if execution.leaves(r, hash_files=False)})
    stages = []
    if plan.fixed:
        stages.append(estimator.stage("runs", [[spec] for spec in plan.fixed]))
    if plan.tuning:
        stages.append(estimator.stage("stage 1: tune on val", [[spec] for spec in plan.tuning]))
    if plan.tuning or plan.picks:
        stages.append(estimator.stage("stage 2: train+val -> test", plan.final_candidates()))
    return stages, model


def _check_budget(stages: list[StageEstimate], model: CostModel, device: str, budget: float) -> None:
    """Refuse, before anything runs, a grid predicted over `budget` hours, or one the model cannot predict in full:
    a guard that guessed would not guard."""
    from bench.cost import hours_line

    line = hours_line(stages, model, device.startswith("cuda"))
    unknown = sum(len(s.unknown) for s in stages)
    if unknown:
        raise BenchError(f"--budget {budget:g} h: cannot check, {unknown} run(s) have no basis ({line}); measure "
                         f"them with bench perf --calibrate --backbone B on this device, or run without --budget")
    if sum(s.seconds for s in stages) > budget * 3600:
        raise BenchError(f"--budget {budget:g} h exceeded: predicted {line}; nothing was run. Narrow the grid "
                         f"(methods, tasks, seeds, --set) or raise --budget")


def _dry_run(plan: Plan, store: Store, console: Console, stages: list[StageEstimate], model: CostModel,
             device: str) -> int:
    from bench.artifacts import disk_bytes, human_bytes, missing

    table = Table(title="grid (dry run: nothing is executed)", title_justify="left")
    for column in ("stage", "method", "task", "backbone", "seed", "recipe", "hyper-parameters", "pipeline", "status",
                   "artifacts", "id"):
        table.add_column(column)
    kept = 0
    for spec in plan.known:
        record = store.read(spec.run_id)
        status = record.status if record else "pending"
        files = ""
        if record is not None and record.done:
            # What --retry-artifacts would regenerate, or what the run's files take on disk.
            files = missing(store.root, record, hash_files=False) or human_bytes(disk_bytes(record))
            kept += disk_bytes(record)
        # Every resolved value: the hyper-parameters, and the pipeline where it is not the harness's own.
        hparams = ", ".join(f"{k}={v}" for k, v in spec.hparams.items())
        pipeline = ", ".join(f"{k}={v}" for k, v in spec.protocol.items()) or "harness"
        table.add_row(spec.stage, spec.method, spec.task, spec.backbone, str(spec.seed), spec.recipe or "none",
                      hparams, pipeline, status, files, spec.run_id)
    console.print(table)
    line = f"{len(plan.known)} run(s)" + (f"; their artifacts take {human_bytes(kept)}" if kept else "")
    if plan.tuning or plan.picks:
        line += (f"; stage 2 trains {plan.selections} selected setting(s) in {plan.final_runs} run(s) "
                 f"({'--seeds' if plan.seeds is not None else 'the final seeds of each recipe'})")
    if plan.picks:
        line += f", {len(plan.picked_finals)} of them with the picks of {plan.picks_file} (stage 1 skipped there)"
    # The budget per method, which a fair comparison gives every method alike (`--recipe shared`).
    if plan.fixed:
        line += f"\nfixed runs per task: {_per_task(plan.fixed)}"
    if plan.tuning:
        line += f"\nstage-1 grid points per task: {_per_task(plan.tuning)}"
    console.print(line, highlight=False, soft_wrap=True)
    from bench.cost import hours, hours_line, no_basis_lines

    for stage in stages:
        unknown = f" (+{len(stage.unknown)} with no basis)" if stage.unknown else ""
        predicted = f"≈ {hours(stage.seconds)} h{unknown}"
        console.print(f"{stage.title}: {stage.runs} run(s) to run ({stage.finished} finished), {stage.images:,} "
                      f"images, {predicted}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"predicted: {hours_line(stages, model, device.startswith('cuda'))}", highlight=False, markup=False,
                  soft_wrap=True)
    for line in no_basis_lines(stages):
        console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)
    return 0


def _per_task(specs: list[RunSpec]) -> str:
    """`method n` per method: its runs per (task, backbone), `lo-hi` where they differ between tasks."""
    counts = Counter((spec.method, spec.task, spec.backbone) for spec in specs)
    sizes = {method: sorted({n for (m, *_), n in counts.items() if m == method}) for method, *_ in counts}
    return ", ".join(f"{method} {n[0]}" + (f"-{n[-1]}" if len(n) > 1 else "") for method, n in sizes.items())


def _frame_table(frame: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    return table


def resolve_device(device: str) -> str:
    """`auto` as cuda when torch sees a GPU, else cpu; any other value checked against what torch sees."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BenchError(f"--device {device} asked for a GPU but torch sees none; use --device cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise BenchError(f"--device {device}: valid GPUs are cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return device
    raise BenchError(f"--device {device!r} is not valid; use auto, cpu, cuda or cuda:N")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    errors = Console(stderr=True)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so joblib stops its worker processes instead of leaving them to finish
    # the queued runs after the grid has gone.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = build_parser().parse_args(argv)
        command = {"run": cmd_run, "list": cmd_list, "data": cmd_data, "pretrain": cmd_pretrain, "check": cmd_check,
                   "report": cmd_report, "perf": cmd_perf, "eval": cmd_eval, "export": cmd_export}[args.command]
        return command(args, console)
    except BenchError as exc:
        errors.print(f"bench: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("bench: interrupted; finished runs are recorded, rerun to resume", markup=False)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
