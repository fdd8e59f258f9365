"""Packaging: methods/ and tasks/ sit beside bench/ in the repository and install inside it, as bench.methods and
bench.tasks, from a wheel and from an editable install; nothing named `methods` or `tasks` lands at the top of
site-packages.

The wheel is built offline from a copy of the package folders (pip, setuptools, no build isolation), so the build
writes nothing into the checkout; setuptools comes from the `test` extra.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Repository folder -> where its files install.
INSTALLED_AS = {"bench": "bench", "methods": "bench/methods", "tasks": "bench/tasks"}


def _python(code: str, cwd: Path, path: Path | None = None) -> str:
    """Run `code` in a fresh interpreter of this environment from `cwd`, with `path` (if any) first on sys.path and
    nothing else added (no PYTHONPATH from the caller), and return what it printed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its package folders, pyproject.toml and README.md."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for folder in INSTALLED_AS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("bench-*.whl")
    return path


def test_the_wheel_holds_every_module_under_bench_and_nothing_named_methods_or_tasks_at_its_top(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{INSTALLED_AS[folder]}/{path.relative_to(REPO / folder).as_posix()}"
                for folder in INSTALLED_AS for path in (REPO / folder).rglob("*.py")}
    assert {"bench/methods/lora.py", "bench/methods/_peft.py", "bench/tasks/micro.py"} <= expected
    assert sorted(expected - names) == [], "package folders missing from pyproject.toml's [tool.setuptools] packages"
    assert {top for top in (name.split("/")[0] for name in names) if not top.endswith(".dist-info")} == {"bench"}
    assert {"bench/report/published.csv", "bench/weights/micro_mae.safetensors", "bench/weights/MODEL_CARD.md"} <= names


def test_the_installed_wheel_finds_its_own_plugins_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # find_spec imports only the parent, bench (no dependencies); the family files are those the loader,
    # bench.registry.import_family_files, walks in each package's folder.
    out = _python(
        "import importlib.util, json, pkgutil\n"
        "found = {}\n"
        "for name in ('bench.methods', 'bench.tasks', 'methods', 'tasks'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    found[name] = spec and [spec.origin, sorted(m.name for m in pkgutil.iter_modules(\n"
        "        spec.submodule_search_locations))]\n"
        "print(json.dumps(found))\n",
        cwd=elsewhere, path=site,
    )
    found = json.loads(out)
    for folder in ("methods", "tasks"):
        origin, modules = found[f"bench.{folder}"]
        assert origin == str(site / "bench" / folder / "__init__.py")
        assert modules == sorted(path.stem for path in (REPO / folder).glob("*.py") if path.stem != "__init__")
        assert found[folder] is None


def _editable_from_this_checkout() -> bool:
    # Every `bench` distribution on the path: an editable install also leaves bench.egg-info in the checkout, which
    # comes first when the checkout is on the path, and records no install.
    for dist in importlib.metadata.distributions(name="bench"):
        found = json.loads(dist.read_text("direct_url.json") or "{}")
        if found.get("dir_info", {}).get("editable") and found.get("url") == REPO.as_uri():
            return True
    return False


@pytest.mark.skipif(not _editable_from_this_checkout(), reason="bench is not installed editable from this checkout")
@pytest.mark.parametrize("where", ["repository root", "another directory"])
def test_an_editable_install_maps_bench_methods_and_bench_tasks_to_the_repositorys_folders(where, tmp_path):
    out = _python(
        "import importlib.util\n"
        "for name in ('bench', 'bench.methods', 'bench.tasks', 'methods', 'tasks'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    print(spec.origin if spec else None)\n",
        cwd=REPO if where == "repository root" else tmp_path,
    )
    bench, methods, tasks, top_methods, top_tasks = out.split()
    assert [bench, methods, tasks] == [str(REPO / folder / "__init__.py") for folder in INSTALLED_AS]
    if where == "another directory":  # the root itself holds folders named methods and tasks
        assert [top_methods, top_tasks] == ["None", "None"]
