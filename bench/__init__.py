"""bench: a harness that compares parameter-efficient ways of adapting a pre-trained ViT.

The core study is "Revisiting the Power of Prompt for Visual Tuning" (Self-Prompt Tuning, Wang et al., ICML 2024),
which initialises VPT's prompts from the downstream data.
"""

from typing import Any

__version__ = "0.1.0"


class BenchError(Exception):
    """An error the user can fix: the message is one line saying what was wrong, what is valid and how to fix it."""


def __getattr__(name: str) -> Any:
    """`bench.load_run` (`bench.tuned.load_run`), resolved when first used (PEP 562), so `import bench` stays light."""
    if name == "load_run":
        import importlib

        # By name, not an import statement: bench.tuned imports the whole harness, which imports this package.
        return importlib.import_module("bench.tuned").load_run
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
