"""Shared fixtures: tiny timm ViTs, the micro-vit backbone, and a tiny task/backbone pair for fast engine runs.

Everything here builds real timm models and real bench objects; nothing under test is mocked.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tensors here are tiny: one thread avoids OpenMP spin-wait stalls when the 2-core machine is shared (measured:
# index_add_ on 4096×32 takes 0.12 s with 2 threads under load, 0.2 ms with 1). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import bench.methods  # noqa: E402,F401  (registers the methods)
import bench.tasks  # noqa: E402,F401  (registers the tasks)
from bench.backbone import BACKBONES, BackboneEntry, load_backbone  # noqa: E402
from bench.data import TASKS, Task, TaskData, TensorSplit  # noqa: E402
from bench.registry import Entry  # noqa: E402

torch.set_num_threads(1)


# A ViT small enough that a forward pass on a handful of 32×32 images takes milliseconds.
TINY_ARCH = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_BACKBONE = "tiny-test-vit"
TINY_TASK = "tiny-test-digits"


def make_tiny_vit(seed: int = 0, perturb: bool = True, **overrides) -> torch.nn.Module:
    """A timm ViT (vit_tiny_patch16_224 family, 32px, patch 8, width 32, 2 blocks) in eval mode.

    With `perturb`, every parameter gets seeded Gaussian noise so that LayerNorm affine parameters, class token,
    positional embedding and biases are all non-trivial (timm's init leaves many of them at 0 or 1).
    """
    kwargs = dict(pretrained=False, num_classes=0, **TINY_ARCH)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", **kwargs)
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for p in vit.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vit.eval()


@pytest.fixture
def tiny_vit():
    """Factory: `tiny_vit(**timm_overrides)` -> a perturbed tiny timm ViT in eval mode."""
    return make_tiny_vit


@pytest.fixture
def images():
    """Four normalised-looking 32×32 RGB images."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def micro_vit():
    """The registered micro-vit backbone (seeded random init), freshly built for each test."""
    return load_backbone("micro-vit")


@pytest.fixture
def digits_train():
    """The digits micro task's training split (400 real uint8 images, 32×32)."""
    return TASKS.get("digits").load().train


@pytest.fixture
def tiny_registered(monkeypatch):
    """Register, for one test only, a tiny backbone (width 32, 2 blocks) and a tiny task (48/16/16 real digit
    images) so that `bench.engine.run` trains for an epoch in well under a second. Returns (backbone, task) names."""
    monkeypatch.setitem(
        BACKBONES._entries,
        TINY_BACKBONE,
        Entry(
            TINY_BACKBONE,
            BackboneEntry("vit_tiny_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "none", "token", dict(TINY_ARCH),
                          hub_weights=False),
            "tiny ViT for tests",
        ),
    )
    digits = TASKS.get("digits").load()

    def load(_root=None) -> TaskData:
        return TaskData(
            TensorSplit(digits.train.images[:48], digits.train.labels[:48]),
            TensorSplit(digits.val.images[:16], digits.val.labels[:16]),
            TensorSplit(digits.test.images[:16], digits.test.labels[:16]),
            info={"source": "first images of the digits micro task"},
        )

    monkeypatch.setitem(
        TASKS._entries, TINY_TASK, Entry(TINY_TASK, Task(TINY_TASK, "test/tiny", 10, load, epochs=1), "tiny task")
    )
    return TINY_BACKBONE, TINY_TASK
