"""How a running grid looks: a rich live display on a terminal, plain log lines anywhere else (CI, log files)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.config import RunSpec
from bench.scheduler import Outcome


class GridDisplay:
    """Overall runs done/total with an ETA, and the current run's epoch and loss (for in-process runs)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console, disable=not self.live,
        )
        self.overall: Any = None
        self.current: Any = None

    def __enter__(self) -> "GridDisplay":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def grid_started(self, title: str, total: int, skipped: int) -> None:
        if self.overall is not None:
            self.bar.remove_task(self.overall)
        self.overall = self.bar.add_task(title, total=total, completed=skipped, status="")
        self._log(f"{title}: {total} run(s), {skipped} already finished")

    def run_started(self, spec: RunSpec) -> None:
        epochs = spec.hparams["epochs"] + spec.hparams.get("cooldown_epochs", 0)
        self.current = self.bar.add_task(f"  {spec.label}", total=epochs, status="")
        self._log(f"start {spec.label}")

    def epoch(self, spec: RunSpec, epoch: int, epochs: int, loss: float, val_acc: float | None) -> None:
        val = "" if val_acc is None else f" val {val_acc:.1f}%"
        self.bar.update(self.current, completed=epoch, status=f"loss {loss:.3f}{val}")
        self._log(f"  epoch {epoch}/{epochs} loss {loss:.4f}{val}")

    def run_finished(self, outcome: Outcome) -> None:
        if self.current is not None:
            self.bar.remove_task(self.current)
            self.current = None
        self.bar.advance(self.overall)
        label = outcome.spec.label
        if outcome.status == "done":
            scores = [f"{name} {value:.2f}%" for name, value in (("val", outcome.val_acc), ("test", outcome.test_acc))
                      if value is not None]
            message = f"done   {label}: {', '.join(scores)}"
        elif outcome.status == "busy":
            message = f"busy   {label}: another process is running it"
        elif outcome.status == "skipped":  # another process finished it after this grid was planned
            message = f"skip   {label}: another process finished it"
        else:
            message = f"FAILED {label}: {outcome.error}"
        if self.live:
            self.bar.console.print(message, highlight=False, markup=False)
        else:
            self._log(message)

    def _log(self, message: str) -> None:
        if not self.live:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)
