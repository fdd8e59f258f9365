"""`bench run` on a real-layout task, end to end in a subprocess, as a user would start it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import data_fixtures as fx
import torch

from bench.record import RunRecord


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_WORKERS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_bench_run_cub_from_a_fixture_and_the_data_root_does_not_change_the_run_id(tmp_path: Path) -> None:
    data, results = tmp_path / "data", tmp_path / "results"
    fx.fgvc_vpt_json(data, sizes={"train": 3, "val": 1, "test": 1})
    args = ["run", "--tasks", "cub", "--epochs", "1", "--methods", "linear", "--backbone", "micro-vit",
            "--results", str(results)]
    first = _bench(*args, "--data-root", str(data))
    assert first.returncode == 0, first.stderr + first.stdout
    records = [RunRecord.from_dict(json.loads(path.read_text())) for path in (results / "runs").glob("*.json")]
    # FGVC follows the tune protocol by default: the linear search grid on val, then one final train+val run.
    tuning = [r for r in records if r.spec.stage == "tune"]
    (final,) = [r for r in records if r.spec.stage == "final"]
    assert len(tuning) == len(records) - 1 > 1
    assert all(r.status == "done" and r.metrics.test_acc is None for r in records if r in tuning)
    assert final.status == "done" and final.metrics.test_acc is not None
    assert final.task.data["layout"] == "fgvc-vpt-json" and final.task.data["split_sizes"]["train"] == 9
    assert "RandomResizedCrop" in final.task.data["transforms"]["train"][0]
    # --device defaults to auto: a GPU when torch sees one, and the record says which ran.
    assert final.provenance.torch_device == ("cuda" if torch.cuda.is_available() else "cpu")
    # The final stage reads train+val from the entries the tuning runs built, and builds only test's.
    assert {e["status"] for e in final.data_path} == {"read", "built"}
    assert len(list((results / "cache" / "decoded").glob("*/images.npy"))) == 3

    moved = shutil.move(data, tmp_path / "elsewhere")
    second = _bench(*args, "--data-root", str(moved))
    assert second.returncode == 0
    assert "0 run(s) done" in second.stdout and f"{len(records)} already finished" in second.stdout.replace("\n", " ")
