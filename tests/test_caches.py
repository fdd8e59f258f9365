"""The caches runs share are objects handed to `engine.run`, never module state another module sets; and what a run
read through them (its record's `data_path`) is its own, even when two runs share a worker process."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import data_fixtures as fx
import pytest

from bench import engine
from bench.engine import Caches
from bench.recipes import make_spec

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "tasks")
CACHE_CLASSES = {"Caches", "TensorCache", "DecodeCache", "LoadedBackbones"}


def _modules() -> list[tuple[Path, ast.Module]]:
    paths = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    assert len(paths) > 20, "the packages were not found"
    return [(path, ast.parse(path.read_text(), str(path))) for path in paths]


def _imported_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _assigned(node: ast.AST) -> list[ast.expr]:
    """The targets an assignment, augmented assignment or `del` writes, tuples unpacked."""
    if isinstance(node, (ast.Assign, ast.Delete)):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    flat: list[ast.expr] = []
    while targets:
        target = targets.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            targets.extend(target.elts)
        else:
            flat.append(target.value if isinstance(target, ast.Starred) else target)
    return flat


def _owner(target: ast.expr) -> str | None:
    """`X` for a target `X.a`, `X.a.b` or `X.a[k]`: the name whose object the assignment changes; None for a plain
    name or a subscript of one (`x = ...`, `x[k] = ...`), which change nothing another module owns."""
    through_attribute = False
    while isinstance(target, (ast.Attribute, ast.Subscript)):
        through_attribute |= isinstance(target, ast.Attribute)
        target = target.value
    return target.id if isinstance(target, ast.Name) and through_attribute else None


def test_no_module_sets_an_attribute_of_an_object_it_imported() -> None:
    """`CENTROIDS.directory = ...` in the scheduler, `engine.FEATURES = ...` in a tool: module state set from outside,
    the pattern the explicit caches replaced. Any assignment, `del` or `setattr` through an imported name counts."""
    found = []
    for path, tree in _modules():
        imported = _imported_names(tree)
        for node in ast.walk(tree):
            owners = [_owner(target) for target in _assigned(node)]
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "delattr"):
                owners.append(node.args[0].id if node.args and isinstance(node.args[0], ast.Name) else None)
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
                      for owner in owners if owner in imported]
    assert found == []


def test_no_module_holds_a_cache_at_module_level() -> None:
    """Caches are built per worker and passed to the engine; a module-level instance is state every importer shares."""
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
        for path, tree in _modules() for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None
        for call in ast.walk(node.value)
        if isinstance(call, ast.Call) and ast.unparse(call.func).split(".")[-1] in CACHE_CLASSES
    ]
    assert found == []


def test_two_runs_in_one_worker_each_record_only_their_own_data_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two file-backed runs share one worker's caches, as the threads of a Dask worker do: the dogs run executes
    whole while the cub run waits after its first epoch, between reading train+val and reading test. Each record
    lists its own splits' decode-cache entries, all of them, and none of the other run's."""
    monkeypatch.setenv("BENCH_WORKERS", "0")
    data = tmp_path / "data"
    fx.fgvc_vpt_json(data, sizes={"train": 3, "val": 2, "test": 2})  # cub, 3 classes: 9, 6, 6 images
    fx.fgvc_vpt_json(data, folder="Dogs", sizes={"train": 2, "val": 1, "test": 1})  # dogs: 6, 3, 3 images
    caches = Caches.for_results(tmp_path / "results")
    cub = make_spec("linear", "cub", "micro-vit", 0, {"epochs": 2}, stage="final")
    dogs = make_spec("linear", "dogs", "micro-vit", 0, {"epochs": 1}, stage="final")
    cub_paused, dogs_done = threading.Event(), threading.Event()
    records: dict[str, dict] = {}

    def wait_for_dogs(epoch: int, *_: object) -> None:
        if epoch == 1:
            cub_paused.set()
            assert dogs_done.wait(timeout=600), "the dogs run never finished"

    def run_cub() -> None:
        records["cub"] = engine.run(cub, data_root=data, on_epoch=wait_for_dogs, caches=caches)

    thread = threading.Thread(target=run_cub)
    thread.start()
    try:
        assert cub_paused.wait(timeout=600), "the cub run failed before its first epoch ended"
        records["dogs"] = engine.run(dogs, data_root=data, caches=caches)
    finally:
        dogs_done.set()
        thread.join()
    assert "cub" in records, "the cub run failed after the dogs run"

    seen = {name: sorted((e["images"], e["status"]) for e in record.data_path) for name, record in records.items()}
    # train and val (read through train+val's parts) before the pause, test after it: each built once.
    assert seen == {"cub": [(6, "built"), (6, "built"), (9, "built")],
                    "dogs": [(3, "built"), (3, "built"), (6, "built")]}
    keys = {name: {e["key"] for e in record.data_path} for name, record in records.items()}
    assert len(keys["cub"]) == len(keys["dogs"]) == 3 and not keys["cub"] & keys["dogs"]
    assert len(list((tmp_path / "results" / "cache" / "decoded").glob("*/images.npy"))) == 6
