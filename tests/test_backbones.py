"""The named ViT-B backbones beyond MAE and MoCo-v3: both supervised ImageNet-21k releases, DINOv2 (with and without
register tokens) and CLIP. Each is built here with random weights of its real architecture (no download) and checked
against timm's own model of the same tag: its declared normalisation, pooling and input size, its features, and the
prompt methods running on it."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.layers import QuickGELU
from torch.testing import assert_close

from bench.backbone import BACKBONES, ViTFeatures, backbone_entry, embed, load_backbone, load_checkpoint
from bench.data import Preprocess, TensorSplit
from bench.method import METHODS, BuildContext
from bench.registry import Entry

NEW = ("sup21k-augreg-vit-b16", "dinov2-vit-b14", "dinov2-reg4-vit-b14", "clip-vit-b16")

# name: (timm tag, prefix tokens: class + registers, patches per side at the declared 224 px)
ARCHITECTURE = {
    "sup21k-augreg-vit-b16": ("vit_base_patch16_224.augreg_in21k", 1, 14),
    "dinov2-vit-b14": ("vit_base_patch14_dinov2.lvd142m", 1, 16),
    "dinov2-reg4-vit-b14": ("vit_base_patch14_reg4_dinov2.lvd142m", 5, 16),
    "clip-vit-b16": ("vit_base_patch16_clip_quickgelu_224.openai", 1, 14),
}


def _offline(name: str, **arch: int) -> Entry:
    """`name`'s entry unchanged but for where the weights come from (seeded random init, not the hub) and, with
    `arch`, timm keyword overrides (a smaller image)."""
    entry = BACKBONES.entry(name)
    obj = dataclasses.replace(entry.obj, hub_weights=False, weights_hint="",
                              arch_kwargs={**entry.obj.arch_kwargs, **arch})
    return Entry(name, obj, entry.description)


@pytest.fixture(scope="module")
def random_backbones():
    """Each new backbone as `load_backbone` builds it, with seeded random weights instead of the hub's."""
    with pytest.MonkeyPatch.context() as patch:
        for name in NEW:
            patch.setitem(BACKBONES._entries, name, _offline(name))
        return {name: load_backbone(name, seed=3) for name in NEW}


@pytest.fixture(scope="module")
def small_backbones():
    """DINOv2 with registers and CLIP at 4×4 patches, so that prompt methods build and run in a second."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES._entries, "dinov2-reg4-vit-b14", _offline("dinov2-reg4-vit-b14", img_size=56))
        patch.setitem(BACKBONES._entries, "clip-vit-b16", _offline("clip-vit-b16", img_size=64))
        return {name: load_backbone(name, seed=3) for name in ("dinov2-reg4-vit-b14", "clip-vit-b16")}


def _images(n: int, size: int = 224) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))


def test_every_registered_backbone_names_its_weights_variant():
    variants = {name: BACKBONES.get(name).variant for name in BACKBONES.names()}
    assert all(variants.values()), variants
    weighted = [v for v in variants.values() if v != "random_init"]  # random weights are no published variant
    assert len(weighted) == len(set(weighted))
    orig, augreg = BACKBONES.get("sup21k-vit-b16"), BACKBONES.get("sup21k-augreg-vit-b16")
    assert (orig.variant, augreg.variant) == ("orig_in21k", "augreg_in21k")
    # One architecture, one objective: only the weights differ, so a recipe or a published number names which.
    assert orig.timm_name.split(".")[0] == augreg.timm_name.split(".")[0] and orig.objective == augreg.objective
    assert backbone_entry("vit_small_patch16_224.augreg_in21k").variant == "augreg_in21k"
    # Any timm name: its tag is the variant, and DINOv2 and CLIP tags get their own objective (recipes key on it).
    names = ("vit_small_patch14_dinov2.lvd142m", "vit_large_patch14_clip_224.openai", "vit_base_patch16_224.augreg_in1k")
    assert [backbone_entry(n).objective for n in names] == ["dinov2", "clip", "supervised"]


@pytest.mark.parametrize("name", NEW)
def test_declared_normalisation_pooling_and_size_are_the_weights_own(name, random_backbones):
    tag, prefix, side = ARCHITECTURE[name]
    entry, cfg = backbone_entry(name), timm.models.get_pretrained_cfg(tag)
    assert entry.timm_name == tag
    assert (entry.mean, entry.std) == (tuple(cfg.mean), tuple(cfg.std))
    with torch.device("meta"):  # timm's default head pooling for the architecture, without building weights
        default_pool = timm.create_model(tag.split(".")[0], pretrained=False).global_pool
    assert entry.pooling == default_pool == "token"
    backbone = random_backbones[name]
    assert (backbone.mean, backbone.std, backbone.pooling) == (entry.mean, entry.std, entry.pooling)
    assert backbone.input_size == 224 and backbone.model.patch_embed.grid_size == (side, side)
    assert backbone.model.num_prefix_tokens == prefix and backbone.describe()["variant"] == entry.variant


@pytest.mark.parametrize("name", NEW)
def test_the_backbone_is_timms_model_of_the_tag_and_bench_pools_as_timm_does(name, random_backbones):
    """The built model is timm's model of the tag, module for module (LayerScale, registers, pre-norm, QuickGELU,
    LayerNorm eps, shapes: the printed module trees are equal), and bench's feature path (its own drive of the
    blocks, `pool_features`) gives what timm's `forward_features` + `forward_head(pre_logits=True)` give."""
    backbone = random_backbones[name]
    tag = ARCHITECTURE[name][0]
    with torch.device("meta"):
        reference = timm.create_model(tag, pretrained=False, num_classes=0, **backbone_entry(name).arch_kwargs)
    assert repr(backbone.model) == repr(reference)
    vit = backbone.model
    x = Preprocess(224, backbone.mean, backbone.std)(_images(1))
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(x), pre_logits=True)
        assert_close(ViTFeatures(vit, backbone.pooling)(x), expected)
    if name == "clip-vit-b16":
        assert isinstance(vit.blocks[0].mlp.act, QuickGELU) and isinstance(vit.norm_pre, torch.nn.LayerNorm)


@pytest.mark.parametrize("method", ["vpt-deep", "spt-deep"])
@pytest.mark.parametrize("name", ["dinov2-reg4-vit-b14", "clip-vit-b16"])
def test_deep_prompt_methods_build_and_run_on_the_backbone(name, method, small_backbones):
    """VPT-deep and SPT-deep (prompts sampled from patch tokens of two images) on DINOv2 with registers and LayerScale,
    and on CLIP with its pre-norm: prompts go after the class and register tokens, which enter block 0 as the
    prompt-free model's do, and the head sees one feature vector per image."""
    backbone = small_backbones[name]
    vit = backbone.model
    spec = METHODS.get(method)
    overrides = {"num_prompts": "2"} | ({"init_images": "2"} if method == "spt-deep" else {})
    config = spec.config_cls.from_overrides(overrides)
    images = _images(2, backbone.input_size)
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    ctx = BuildContext(backbone, 5, TensorSplit(images, torch.tensor([0, 1])), preprocess,
                       torch.Generator().manual_seed(0), torch.device("cpu"))
    adapted = spec.build(config, ctx)
    trunk = adapted.trunk.eval()
    assert trunk.prompts.shape == (len(vit.blocks), 2, vit.embed_dim)
    x = preprocess(images)
    with torch.no_grad():
        entering = next(iter(trunk.forward_tokens(x)))
        prefix = vit.num_prefix_tokens
        assert entering.shape[1] == prefix + 2 + vit.patch_embed.num_patches
        assert_close(entering[:, :prefix], embed(vit, x)[:, :prefix])
        logits = adapted.head(trunk(x))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    with torch.no_grad():
        assert not torch.allclose(trunk(x), ViTFeatures(vit, backbone.pooling)(x))  # the prompts take part


def test_a_dinov2_release_checkpoint_loads_with_its_mask_token_and_other_resolution(tmp_path):
    """DINOv2's own `dinov2_vit*14_pretrain.pth` names its weights as timm does (LayerScale `ls1.gamma`), adds the
    `mask_token` of its iBOT loss and is trained at 518 px: on a small model of the same family, the file loads with
    the mask token dropped and the position embedding resampled by timm's filter."""
    small = dict(patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=1e-5, num_classes=0)
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=42, **small)
    state = {k: v + 0.01 * torch.randn_like(v) for k, v in source.state_dict().items()}
    torch.save({**state, "mask_token": torch.zeros(1, 32)}, tmp_path / "dinov2_pretrain.pth")
    target = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, **small)
    assert load_checkpoint(target, tmp_path / "dinov2_pretrain.pth")[0] == "timm"
    assert torch.equal(target.blocks[1].ls2.gamma, state["blocks.1.ls2.gamma"])
    assert target.pos_embed.shape == (1, 1 + 2 * 2, 32)
