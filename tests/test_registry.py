"""The generic registry and the real method/task registries: misses explain themselves, selections resolve."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from bench import BenchError
from bench.data import TASKS
from bench.method import METHODS
from bench.registry import Registry


@pytest.fixture
def fruits() -> Registry[int]:
    registry: Registry[int] = Registry("fruit")
    for i, name in enumerate(["apple", "apricot", "banana", "cherry"]):
        registry.register(name, i, f"fruit {i}")
    registry.alias("stone", ["apricot", "cherry"])
    return registry


def test_get_returns_registered_object(fruits):
    assert fruits.get("banana") == 2
    assert fruits.entry("cherry").description == "fruit 3"
    assert "apple" in fruits and "stone" not in fruits


def test_get_miss_lists_valid_names_and_close_matches(fruits):
    with pytest.raises(BenchError) as info:
        fruits.get("bananna")
    message = str(info.value)
    assert "\n" not in message
    assert "'bananna'" in message and "fruit" in message
    for name in ["apple", "apricot", "banana", "cherry", "stone"]:
        assert name in message
    assert "Did you mean 'banana'" in message


def test_get_miss_without_close_match_has_no_suggestion(fruits):
    with pytest.raises(BenchError) as info:
        fruits.get("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_real_registry_misses_suggest_the_intended_name():
    with pytest.raises(BenchError) as info:
        METHODS.get("vpt-dep")
    message = str(info.value)
    assert all(name in message for name in METHODS.names())
    assert "'vpt-deep'" in message.split("Did you mean")[1]
    with pytest.raises(BenchError) as info:
        TASKS.get("digitz")
    assert "'digits'" in str(info.value).split("Did you mean")[1]


def test_resolve_expands_aliases_globs_and_deduplicates(fruits):
    assert fruits.resolve("stone") == ["apricot", "cherry"]
    assert fruits.resolve("ap*") == ["apple", "apricot"]
    assert fruits.resolve("cherry, stone ,ap*,apple,,") == ["cherry", "apricot", "apple"]
    assert fruits.resolve(["banana", "banana"]) == ["banana"]


def test_resolve_rejects_unknown_names_empty_selections_and_unmatched_globs(fruits):
    for selection in ["kiwi", "", " , ", "x*"]:
        with pytest.raises(BenchError):
            fruits.resolve(selection)


def test_registering_twice_or_aliasing_unknown_names_is_refused(fruits):
    with pytest.raises(ValueError):
        fruits.register("apple", 9, "again")
    with pytest.raises(ValueError):
        fruits.alias("mixed", ["apple", "kiwi"])
    with pytest.raises(ValueError):
        fruits.alias("banana", ["apple"])


def test_method_aliases_name_both_depths():
    assert METHODS.resolve("spt") == ["spt-shallow", "spt-deep"]
    assert METHODS.resolve("vpt") == ["vpt-shallow", "vpt-deep"]
    assert METHODS.resolve("spt,spt-deep,*-deep") == ["spt-shallow", "spt-deep", "vpt-deep"]
    assert set(METHODS.resolve("*")) >= {"linear", "full", "vpt-shallow", "vpt-deep", "spt-shallow", "spt-deep"}


def test_micro_alias_names_the_five_micro_tasks():
    micro = TASKS.resolve("micro")
    assert sorted(micro) == sorted(["digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count"])
    assert all(TASKS.get(name).group.startswith("micro/") for name in micro)
    assert TASKS.resolve("micro,digits,sprites-*") == micro
    assert set(TASKS.resolve("micro-real")) | set(TASKS.resolve("micro-structured")) == set(micro)


def test_a_family_file_dropped_into_a_package_registers_without_an_import_line(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from bench.registry import import_family_files\n\nimport_family_files(__name__, __path__)\n")
    (package / "_shared.py").write_text("from bench.registry import Registry\n\nFOUND = Registry('plugin')\n")
    for name in ("zeta", "alpha"):
        (package / f"{name}.py").write_text(
            f"from plugins._shared import FOUND\n\nFOUND.register({name!r}, {name!r}, 'a plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("plugins")
    assert importlib.import_module("plugins._shared").FOUND.names() == ["alpha", "zeta"]  # name order, helper skipped


def test_every_file_in_methods_and_tasks_is_imported_by_its_package():
    from bench import methods, tasks

    for package in (methods, tasks):
        files = {p.stem for p in Path(package.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
        assert files and all(f"{package.__name__}.{stem}" in sys.modules for stem in files)
