"""`bench`: run the grid, list what is registered.

Every error a user can cause ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from bench import BenchError

DEFAULT_METHODS = "linear,vpt-deep,spt-deep"
DEFAULT_TASKS = "micro"
DEFAULT_BACKBONE = "micro-vit"


def _registries() -> dict[str, Any]:
    import methods  # noqa: F401  (registers the methods)
    import tasks  # noqa: F401  (registers the tasks)
    from bench.backbone import BACKBONES
    from bench.data import TASKS
    from bench.method import METHODS

    return {"methods": METHODS, "tasks": TASKS, "backbones": BACKBONES}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("expected at least one seed, e.g. --seeds 0")
    return seeds


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
    run.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registered name or timm ViT (default {DEFAULT_BACKBONE})")
    run.add_argument("--weights", type=Path, help="local checkpoint: timm/.safetensors, .npz, MAE or MoCo-v3 .pth")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma list of seeds (default 0)")
    run.add_argument("--epochs", type=_positive, help="override every run's epochs")
    run.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE[,VALUE..]",
                     help="hyper-parameter; a comma list sweeps it (repeatable)")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")

    lst = sub.add_parser("list", help="show registered methods, tasks and backbones")
    lst.add_argument("what", nargs="?", choices=["methods", "tasks", "backbones"], help="one registry (default all)")
    return parser


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
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    registries = _registries()
    from bench.scheduler import expand_grid, parse_sets, run_grid
    from bench.store import Store

    if args.weights is not None and not args.weights.is_file():
        raise BenchError(f"--weights {args.weights} does not exist; pass a checkpoint file")
    _check_device(args.device)
    method_names = registries["methods"].resolve(args.methods)
    task_names = registries["tasks"].resolve(args.tasks)
    sweeps = parse_sets(args.sets)
    if args.epochs is not None:
        sweeps["epochs"] = [str(args.epochs)]
    weights = str(args.weights.resolve()) if args.weights else None
    specs = expand_grid(method_names, task_names, args.backbone, args.seeds, sweeps, weights)
    store = Store(args.results)
    with _RichProgress(console) as progress:
        result = run_grid(specs, store, device=args.device, progress=progress)

    console.print(
        f"{len(result.done)} run(s) done, {len(result.skipped)} already done, {len(result.failed)} failed; "
        f"records in {store.runs}"
    )
    for spec, reason in result.failed:
        console.print(f"[red]failed[/red] {spec.label}: {reason}")
    return 1 if result.failed else 0


def _check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BenchError(f"--device {device} asked for a GPU but torch sees none; use --device cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise BenchError(f"--device {device}: valid GPUs are cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return
    raise BenchError(f"--device {device!r} is not valid; use cpu, cuda or cuda:N")


class _RichProgress:
    """Overall runs with an ETA, and the current run's epoch and loss; plain lines when not on a terminal."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, disable=not self.live,
        )

    def __enter__(self) -> "_RichProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def grid_started(self, total: int, skipped: int) -> None:
        self.overall = self.bar.add_task("runs", total=total, completed=skipped, status="")
        self.current = None
        self._log(f"{total} run(s) in the grid, {skipped} already done")

    def run_started(self, spec: Any) -> None:
        self.current = self.bar.add_task(f"  {spec.label}", total=spec.hparams["epochs"], status="")
        self._log(f"start {spec.label}")

    def epoch(self, spec: Any, epoch: int, epochs: int, loss: float, val_acc: float) -> None:
        self.bar.update(self.current, completed=epoch, status=f"loss {loss:.3f} val {val_acc:.1f}%")
        self._log(f"  epoch {epoch}/{epochs} loss {loss:.4f} val_acc {val_acc:.2f}")

    def run_finished(self, spec: Any, record: dict[str, Any]) -> None:
        self.bar.remove_task(self.current)
        self.bar.advance(self.overall)
        if record["status"] == "done":
            message = f"done  {spec.label}: test {record['metrics']['test_acc']:.2f}%"
        else:
            message = f"FAILED {spec.label}: {record['error']}"
        self.console.print(message) if self.live else self._log(message)

    def _log(self, message: str) -> None:
        if not self.live:
            self.console.print(message, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    console = Console()
    errors = Console(stderr=True)
    try:
        args = build_parser().parse_args(argv)
        command = {"run": cmd_run, "list": cmd_list}[args.command]
        return command(args, console)
    except BenchError as exc:
        errors.print(f"bench: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("bench: interrupted; finished runs are recorded, rerun to resume", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
