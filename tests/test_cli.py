"""`bench` end to end in subprocesses: a real run leaves records and is skipped when rerun; every user error is one
`bench: error:` line on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from bench.backbone import DEFAULT_BACKBONE, MICRO_ARCH
from bench.record import RunRecord

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _bench(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)


def test_cli_run_writes_one_done_record_per_run_and_rerun_skips(tmp_path):
    results = tmp_path / "results"
    args = ("run", "--methods", "linear,vpt-deep", "--tasks", "digits", "--epochs", "1", "--results", str(results))
    first = _bench(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    records = sorted((results / "runs").glob("*.json"))
    assert len(records) == 2
    contents = [RunRecord.from_dict(json.loads(p.read_text())) for p in records]
    assert sorted(r.spec.method for r in contents) == ["linear", "vpt-deep"]
    for record, path in zip(contents, records):
        assert record.status == "done"
        assert path.stem == record.id
        assert record.spec.task == "digits" and record.spec.backbone == DEFAULT_BACKBONE
        assert record.spec.hparams["epochs"] == 1
        assert len(record.curves["train_loss"]) == 1
        assert 0.0 <= record.metrics.test_acc <= 100.0
        # Learnable parameters of the micro architecture: prompts (N·D per prompted block) plus a D→10 head.
        d, depth = MICRO_ARCH["embed_dim"], MICRO_ARCH["depth"]
        prompts = record.spec.hparams["num_prompts"] * d * depth if record.spec.method == "vpt-deep" else 0
        assert record.params.learnable == prompts + d * 10 + 10
        assert record.params.learnable_without_head == prompts
    assert not [p for p in (results / "runs").iterdir() if p.suffix != ".json"]

    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in records}
    second = _bench(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert re.search(r"\b0 run\(s\) done\b", second.stdout), second.stdout
    assert re.search(r"\b2 already (done|finished)\b", second.stdout), second.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (results / "runs").glob("*.json")} == before


ERRORS = {
    # case: (extra args for `bench run`, text the one-line message must contain)
    "unknown-method": (["--methods", "vpt-dep"], "vpt-deep"),
    "unknown-task": (["--tasks", "digitz"], "digits"),
    "bad-set-format": (["--set", "lr"], "--set"),
    "unknown-hparam": (["--set", "nonsense=1"], "nonsense"),
    "bad-value": (["--methods", "spt-deep", "--set", "init=foo"], "init"),
    "missing-weights": (["--weights", "{tmp}/no_such_checkpoint.pth"], "no_such_checkpoint.pth"),
    "bad-seeds": (["--seeds", "x"], "seeds"),
    "cuda-without-gpu": (["--device", "cuda"], "cuda"),
    # Inputs `_write_inputs` plants: each must fail before the grid, not as one failed record per run.
    "garbage-weights": (["--weights", "{tmp}/garbage.pth"], "cannot read checkpoint"),
    "wrong-keys-weights": (["--weights", "{tmp}/resnet.pth"], "does not fit"),
    "crafted-weights": (["--weights", "{tmp}/crafted.pth"], "refusing to load checkpoint"),
    "crafted-weights-dry-run": (["--weights", "{tmp}/crafted.pth", "--dry-run"], "refusing to load checkpoint"),
    "missing-image": (["--tasks", "dogs", "--data-root", "{tmp}/data"], "1 listed image(s) missing"),
    "results-is-a-file": (["--results", "{tmp}/a_file/results"], "is a file, not a folder"),
    "unknown-device": (["--device", "tpu"], "auto, cpu, cuda or cuda:N"),
    "unknown-recipe": (["--recipe", "spt-papr"], "spt-paper"),
    "recipe-fits-no-method": (["--methods", "linear", "--recipe", "vpt-paper"], "applies to"),
    "bad-lr-step": (["--methods", "vpt-deep", "--set", "lr_step=week"], "batch or epoch"),
    "bad-head-weight-decay": (["--methods", "spt-deep", "--set", "head_weight_decay=lots"], "head_weight_decay"),
}


class _WritesMarker:
    """Unpickling this writes a file: a checkpoint crafted to run code on load."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).write_text, (self.marker, "code ran"))


def _write_inputs(tmp) -> None:
    import data_fixtures as fx

    (tmp / "garbage.pth").write_bytes(b"this is not a torch file")
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, tmp / "resnet.pth")
    torch.save({"model": {}, "payload": _WritesMarker(tmp / "marker")}, tmp / "crafted.pth")
    (tmp / "a_file").write_text("")
    dataset = fx.fgvc_spt_txt(tmp / "data", folder="Dogs", image_dir="images")
    next(dataset.glob("images/class_1/*.png")).unlink()


# These go through a real `python -m bench.cli` process (the entry point's exit path); every case also runs in-process
# below, which checks the same handling at a fraction of the cost of one interpreter start per case.
SUBPROCESS_CASES = ["unknown-method", "bad-seeds", "bad-value", "cuda-without-gpu", "crafted-weights"]


def _run_args(tmp, case: str) -> list[str]:
    extra, _ = ERRORS[case]
    return ["run", "--tasks", "digits", "--epochs", "1", "--results", str(tmp / case)] + [
        a.format(tmp=tmp) for a in extra
    ]


def _skip_cuda_case(case: str) -> None:
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda is valid here")


def _assert_one_line_error(returncode: int, out: str, err: str, case: str, tmp) -> None:
    assert returncode == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error:")
    assert ERRORS[case][1] in lines[0]
    assert not (tmp / case).exists(), "a failed invocation must write nothing"
    assert not (tmp / "marker").exists(), "a checkpoint's pickled code must never run"


@pytest.fixture(scope="module")
def error_processes(tmp_path_factory):
    """Launch the subprocess cases at once (each only imports and fails), then collect them."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    _write_inputs(tmp)
    procs = {}
    for case in SUBPROCESS_CASES:
        if case == "cuda-without-gpu" and torch.cuda.is_available():
            continue
        procs[case] = subprocess.Popen([sys.executable, "-m", "bench.cli", *_run_args(tmp, case)], cwd=tmp, env=ENV,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        done[case] = (proc.returncode, out, err)
    return tmp, done


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_cli_process_user_error_is_one_line_exit_2(error_processes, case):
    _skip_cuda_case(case)
    tmp, done = error_processes
    _assert_one_line_error(*done[case], case, tmp)


@pytest.mark.parametrize("case", list(ERRORS))
def test_cli_main_user_error_is_one_line_exit_2(tmp_path, capsys, case):
    from bench.cli import main

    _skip_cuda_case(case)
    _write_inputs(tmp_path)
    returncode = main(_run_args(tmp_path, case))
    captured = capsys.readouterr()
    _assert_one_line_error(returncode, captured.out, captured.err, case, tmp_path)


def _tables(out: str) -> dict[str, list[str]]:
    """Title -> the first cell of each row, from rich tables as `bench` prints them (wrapped rows leave it empty)."""
    lines = out.splitlines()
    tables: dict[str, list[str]] = {}
    for title, top in zip(lines, lines[1:]):
        if top.startswith("┏"):
            tables[title.strip()] = []
            current = tables[title.strip()]
        elif title.startswith("│") and title.split("│")[1].strip():
            current.append(title.split("│")[1].strip())
    return tables


def test_bench_list_shows_every_registered_name_and_alias(capsys, monkeypatch):
    from bench.backbone import BACKBONES
    from bench.cli import main
    from bench.data import TASKS
    from bench.method import METHODS
    from bench.recipes import RECIPES

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal
    assert main(["list"]) == 0
    tables = _tables(capsys.readouterr().out)
    for kind, registry in {"methods": METHODS, "tasks": TASKS, "backbones": BACKBONES, "recipes": RECIPES}.items():
        assert tables[kind] == [*registry.names(), *registry.aliases()], kind
    assert {"spt-shallow", "spt-deep", "spt"} <= set(tables["methods"]) and "micro" in tables["tasks"]

    assert main(["list", "tasks"]) == 0
    assert list(_tables(capsys.readouterr().out)) == ["tasks"]


def test_bench_list_recipes_shows_each_recipes_values_per_objective_and_their_sources(capsys, monkeypatch):
    from bench.cli import main
    from bench.recipes import RECIPES

    monkeypatch.setenv("COLUMNS", "250")
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    tables = _tables(out)
    assert tables.pop("recipes") == RECIPES.names()
    recipes = RECIPES.entries()
    assert len(tables) == len(recipes)
    for entry, (title, objectives) in zip(recipes, tables.items()):
        assert title.startswith(f"{entry.name}: applies to {', '.join(entry.obj.methods)}; ")
        recipe = entry.obj
        per_method = [f"{method} on {scope}" for method, scopes in recipe.method_values.items() for scope in scopes]
        lr_rule = ["*"] if recipe.lr_factors else []  # the shared protocol's lr grid, one rule for every method
        assert objectives == list(dict.fromkeys([*recipe.values, *recipe.search, *recipe.protocol])) + per_method \
            + lr_rule
        assert set(recipe.values) <= set(objectives)
        for what, source in entry.obj.sources.items():
            assert f"{what}: {source}" in re.sub(r"\s+", " ", out)
