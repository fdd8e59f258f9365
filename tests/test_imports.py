"""No import circles in the house: the modules of bench/, methods/ and tasks/, read with `ast`, import one way.

Every import statement counts, at the top of a module or inside a function: an import moved into a function only
delays a circle, and the two modules still cannot be read, tested or moved one without the other. A package's
`__init__` is a node of its own. The plug-in folders methods/ and tasks/ may be imported as `methods.x` or as
`bench.methods.x` (their place inside the installed package): both name one node, found from the folders on disk.
Imports made at run time by name (`bench.registry.import_family_files`) are not statements and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Collection, Mapping

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("bench", "methods", "tasks")
PLUGINS = ("methods", "tasks")  # installed inside bench's namespace, as bench.methods and bench.tasks


def canonical(name: str) -> str:
    """One name per module: `bench.methods.x` and `methods.x` are both the file methods/x.py."""
    head, _, rest = name.partition(".")
    return rest if head == "bench" and rest.split(".")[0] in PLUGINS else name


def discover(root: Path = ROOT) -> dict[str, list[Path]]:
    """Every module under the project's folders, by canonical name, with its files: a package is named by its
    `__init__.py`, and a file under bench/ that stands for a plug-in folder (bench/methods/) joins that folder's node."""
    modules: dict[str, list[Path]] = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules.setdefault(canonical(".".join(parts[:-1] if parts[-1] == "__init__" else parts)), []).append(path)
    return modules


def imports(name: str, is_package: bool, source: str, modules: Collection[str]) -> set[str]:
    """The project modules that the module `name` imports anywhere in `source`.

    `import a.b.c` names the module a.b.c; `from a.b import c` names the submodule a.b.c if there is one, else the
    module a.b. A relative import is resolved from the module's place in the installed package, where methods/ and
    tasks/ sit inside bench: climbing out of them lands in bench.
    """
    installed = f"bench.{name}" if name.split(".")[0] in PLUGINS else name
    package = installed.split(".") if is_package else installed.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                assert node.level <= len(package), f"{name}: a relative import climbs above the top package"
                base = ".".join([*package[:len(package) - node.level + 1], *filter(None, [node.module])])
            targets = [f"{base}.{alias.name}" if canonical(f"{base}.{alias.name}") in modules else base
                       for alias in node.names]
        else:
            continue
        found |= {canonical(target) for target in targets} & set(modules)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the other project modules it imports."""
    modules = discover(root)
    return {name: set().union(*(imports(name, path.name == "__init__.py", path.read_text(), modules)
                                for path in paths)) - {name}
            for name, paths in modules.items()}


def circles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Import circles as [a, b, ..., a], one for each edge that closes a loop in a depth-first walk; none exactly when
    the graph has no cycle."""
    open_path: list[str] = []  # the walk's current path: an edge back into it closes a circle
    done: set[str] = set()
    found = []

    def walk(node: str) -> None:
        open_path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in open_path:
                found.append([*open_path[open_path.index(target):], target])
            elif target not in done:
                walk(target)
        open_path.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            walk(node)
    return found


def test_no_two_project_modules_import_each_other_directly_or_around_a_loop() -> None:
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in found)


def test_the_graph_counts_imports_inside_functions_and_names_submodules() -> None:
    graph = import_graph()
    assert {"bench.report", "bench.scheduler"} <= graph["bench.cli"]  # both imported inside command functions
    assert {"bench", "bench.nmi", "bench.kmeans"} <= graph["methods.prompt"]  # from bench import BenchError, nmi
    assert "bench.report.tables" in graph["bench.report.published"]


def test_relative_and_in_package_plugin_imports_resolve_to_the_same_modules() -> None:
    modules = discover()
    source = ("from ..registry import Registry\nfrom . import lora\nfrom .linear import LinearConfig\n"
              "import bench.tasks.micro\nfrom bench.methods import full\nfrom methods.bitfit import BitFitConfig\n"
              "import numpy.linalg\nfrom torch import nn\n\ndef later():\n    from bench import store\n")
    assert imports("methods.prompt", False, source, modules) == {
        "bench.registry", "methods.lora", "methods.linear", "tasks.micro", "methods.full", "methods.bitfit",
        "bench.store"}
    assert imports("bench.report", True, "from .tables import Table\nfrom . import figures\n", modules) == {
        "bench.report.tables", "bench.report.figures"}


def test_a_circle_is_found_and_named_in_order() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
