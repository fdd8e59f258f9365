"""Tasks and their splits: the declarative record a task registers, and the batches the engine consumes.

Splits yield uint8 image batches; `Preprocess` turns them into what a backbone expects (its resolution and its
normalisation) on the device, so one decoded copy of a task serves every backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bench.registry import Registry

if TYPE_CHECKING:
    from bench.decoded import DataPath

Batch = tuple[torch.Tensor, torch.Tensor]


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Iterator[Batch]:
        """Yield (uint8 images N×3×H×W, int64 labels); shuffled when a generator is given. `device` is where the
        caller will use the images: a split may deliver them there (a file split augments on it)."""
        ...

    def image_batches(self, index: torch.Tensor, batch_size: int,
                      generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """The uint8 images at `index` (repeats allowed), in that order, in batches of `batch_size`: through the
        eval pipeline, or with a generator through the training augmentation, one seed per image drawn from it."""
        ...

    def merged_with(self, other: "Split") -> "Split":
        """This split followed by `other` (the final stage trains on train+val)."""
        ...

    def with_data_path(self, data_path: DataPath) -> "Split":
        """This split, reading decoded images through a run's `data_path` (a split of image files); a split held
        in memory is itself."""
        ...


def tensor_batches(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[Batch]:
    """Slice aligned tensors into batches, in a generator-seeded random order when a generator is given."""
    order = torch.randperm(len(labels), generator=generator) if generator is not None else None
    for start in range(0, len(labels), batch_size):
        if order is None:
            yield inputs[start:start + batch_size], labels[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            yield inputs[index], labels[index]


@dataclass
class TensorSplit:
    """A split held in memory: small tasks, decoded once."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Iterator[Batch]:
        return tensor_batches(self.images, self.labels, batch_size, generator)

    def image_batches(self, index: torch.Tensor, batch_size: int,
                      generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        # Held in memory, decoded once: no pipeline to augment with.
        for start in range(0, len(index), batch_size):
            yield self.images[index[start:start + batch_size]]

    def merged_with(self, other: Split) -> TensorSplit:
        return TensorSplit(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]))

    def with_data_path(self, data_path: DataPath) -> TensorSplit:
        return self


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    info: dict[str, Any] = field(default_factory=dict)

    def with_data_path(self, data_path: DataPath) -> TaskData:
        """The same splits, reading decoded images through one run's `data_path`."""
        return TaskData(self.train.with_data_path(data_path), self.val.with_data_path(data_path),
                        self.test.with_data_path(data_path), self.info)


@dataclass(frozen=True)
class Task:
    """A downstream classification task: what it is and how to load it.

    Attributes:
        name: public name (`cub`, `digits`, ...).
        group: family and group, e.g. `micro/structured`, `vtab/natural`, `fgvc`.
        num_classes: number of classes; labels are 0..num_classes-1.
        load: builds the task's splits (seeded and fixed for a given task) from the data root; tasks generated in
            memory ignore the root, file-backed ones (a `bench.layouts.DataSource`) fall back to `$BENCH_DATA`.
        epochs: default training epochs for this task.
        protocol: default evaluation protocol: `tune` (search on val, then train+val -> test; benchmarks) or
            `fixed` (the given hyper-parameters; the micro suite, whose purpose is a quick, cheap signal).
    """

    name: str
    group: str
    num_classes: int
    load: Callable[[Path | None], TaskData]
    epochs: int = 10
    protocol: str = "tune"


class LoadedTasks:
    """Tasks this process has loaded, by task and data root: the pre-flight check of a grid and all its runs read a
    task's list files once. The splits are shared by the runs, so nothing changes them in place: a run reads through
    its own `with_data_path` view."""

    def __init__(self) -> None:
        self.loads = 0
        self._held: dict[tuple[str, Path | None], tuple[Task, TaskData]] = {}

    def get(self, task: Task, data_root: Path | None) -> TaskData:
        key = (task.name, data_root)
        held = self._held.get(key)
        if held is None or held[0] is not task:  # a task registered anew under its name is another task
            held = self._held[key] = (task, task.load(data_root))
            self.loads += 1
        return held[1]


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task, description: str) -> Task:
    return TASKS.register(task.name, task, description)


@dataclass(frozen=True)
class TaskGroup:
    """How the report presents a group of tasks; declared by the task family's file, beside its tasks.

    Attributes:
        id: the tasks' `Task.group` (`vtab/natural`); the part before `/` names the family's table (`vtab`).
        label: the group's column in its family's table (`Natural`); a family of one group shows `Mean` there.
        table_title: the family's table title (`VTAB-1k`).
        summary_label: the group's column in the summary table; `label` when empty.
    """

    id: str
    label: str
    table_title: str
    summary_label: str = ""


TASK_GROUPS: Registry[TaskGroup] = Registry("task group")


def register_group(group: TaskGroup) -> TaskGroup:
    return TASK_GROUPS.register(group.id, group, group.label)


class Preprocess(nn.Module):
    """uint8 batch → float batch at the backbone's resolution, normalised with the backbone's mean and std."""

    def __init__(self, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", antialias=True)
        return (x - self.mean) / self.std
