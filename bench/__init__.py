"""bench: a harness that compares parameter-efficient ways of adapting a pre-trained ViT.

The core study is "Revisiting the Power of Prompt for Visual Tuning" (Self-Prompt Tuning, Wang et al., ICML 2024),
which initialises VPT's prompts from the downstream data.
"""

__version__ = "0.1.0"


class BenchError(Exception):
    """An error the user can fix: the message is one line saying what was wrong, what is valid and how to fix it."""
