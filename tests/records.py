"""The one factory for run records in tests: complete records as the engine writes them, with the values a test sets."""

from __future__ import annotations

from typing import Any

from bench.config import RunSpec
from bench.data import TASKS
from bench.record import (
    CpuShare, Memory, Metrics, ParamCounts, Provenance, RunRecord, TaskInfo, Throughput, WallClock,
)


def make_record(
    spec: RunSpec,
    test_acc: float | None = None,
    val_acc: float | None = None,
    *,
    status: str = "done",
    error: str = "boom",
    run_id: str | None = None,
    group: str | None = None,
    curves: dict[str, list[Any]] | None = None,
    learnable_pct: float = 1.0,
    backbone_params: int = 2_700_000,
    train_seconds: float = 10.0,
    cpu_share: CpuShare | None = None,
) -> RunRecord:
    """A finished run of `spec` (or, with `status="failed"`, a failed one) with the given accuracies; `val_acc`
    defaults to `test_acc`, the group to the registered task's and the curves to one epoch ending at `val_acc`; no
    `cpu_share`, as in records older than that field, unless given."""
    run_id = run_id or spec.run_id
    if status == "failed":
        return RunRecord(id=run_id, spec=spec, status="failed", error=error, traceback="")
    val_acc = test_acc if val_acc is None else val_acc
    learnable = max(1, round(backbone_params * learnable_pct / 100))
    return RunRecord(
        id=run_id, spec=spec, status=status, recipe=None,
        task=TaskInfo(spec.task, group or TASKS.get(spec.task).group, 10, {"source": "test"}),
        backbone={"name": spec.backbone, "num_params": backbone_params},
        method_info={},
        curves=curves if curves is not None else {"train_loss": [1.0], "val_acc": [val_acc]},
        metrics=Metrics(val_acc=val_acc, test_acc=test_acc),
        params=ParamCounts(backbone=backbone_params, learnable=learnable, learnable_without_head=learnable - 1, head=1,
                           learnable_pct=learnable_pct,
                           learnable_without_head_pct=100.0 * (learnable - 1) / backbone_params),
        extra_tokens=0,
        wallclock=WallClock(prompt_construction=0.25, feature_cache=0.0, train=train_seconds, eval=1.0, probe=0.1),
        cpu_share=cpu_share,
        throughput=Throughput(train_images_per_s=100.0, test_images_per_s=1000.0),
        memory=Memory("process_peak_rss", 100.0),
        data_path=[],
        provenance=Provenance(versions={"bench": "test"}, git_commit=None, torch_device="cpu", device="cpu (test)",
                              torch_threads=1, precision="fp32", timm_name="test", transform={}),
    )
