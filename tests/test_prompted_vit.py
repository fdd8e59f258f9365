"""PromptedViT against timm: zero prompts reduce to timm's forward, shallow prompts are timm register tokens without
position, deep prompts replace the previous block's prompt outputs (checked against a hand-built reference)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from bench.backbone import ViTFeatures
from bench.data import Preprocess, TensorSplit
from bench.method import METHODS, BuildContext
from bench.methods.prompt import PromptedViT

POOLINGS = {
    # name: (PromptedViT pooling, timm create kwargs), as bench.backbone builds each
    "token": ("token", dict(global_pool="token")),
    "avg": ("avg", dict(global_pool="avg", fc_norm=False)),
}


def _reference_forward(vit, prompts: torch.Tensor, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """The SPT reference's prompted forward (`Models/MAE_vpt_deep.py`, `Models/MAE_vpt.py`), written here from its
    description: [cls + pos, patches + pos]; prompts (no position) inserted after the class token; deep: before every
    later block the previous prompt outputs are replaced by that block's prompts; `avg`: mean of every token after the
    class token (prompts included), then `norm`; `token`: `norm`, then the class token."""
    b, n = images.shape[0], prompts.shape[1]
    x = torch.cat([vit.cls_token.expand(b, -1, -1), vit.patch_embed(images)], dim=1) + vit.pos_embed
    x = torch.cat([x[:, :1], prompts[0].expand(b, -1, -1), x[:, 1:]], dim=1)
    for i, block in enumerate(vit.blocks):
        if i > 0 and prompts.shape[0] > 1:
            x = torch.cat([x[:, :1], prompts[i].expand(b, -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x)
    return vit.norm(x[:, 1:].mean(dim=1)) if pooling == "avg" else vit.norm(x)[:, 0]


def _prompts_of_norm(layers: int, n: int, dim: int, norm: float, seed: int) -> torch.Tensor:
    prompts = torch.randn(layers, n, dim, generator=torch.Generator().manual_seed(seed))
    return prompts * (norm / prompts.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_prompted_features_equal_the_reference_forward(tiny_vit, images, pooling, deep):
    mode, kwargs = POOLINGS[pooling]
    vit = tiny_vit(depth=3, **kwargs)
    prompts = _prompts_of_norm(3 if deep else 1, 4, vit.embed_dim, 3.0, seed=5)
    trunk = PromptedViT(vit, prompts, mode).eval()
    with torch.no_grad():
        assert_close(trunk(images), _reference_forward(vit, prompts, images, mode), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", list(POOLINGS))
def test_unprompted_features_equal_the_reference_forward(tiny_vit, images, pooling):
    """The linear probe's and full fine-tuning's trunk pools exactly as the prompted one (no prompts)."""
    mode, kwargs = POOLINGS[pooling]
    vit = tiny_vit(**kwargs)
    with torch.no_grad():
        expected = _reference_forward(vit, torch.zeros(1, 0, vit.embed_dim), images, mode)
        assert_close(ViTFeatures(vit, mode)(images), expected, atol=1e-5, rtol=1e-5)
        assert_close(PromptedViT(vit, torch.zeros(1, 0, vit.embed_dim), mode).eval()(images), expected)


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_zero_prompts_with_class_token_pooling_reduce_to_timm_forward(tiny_vit, images, deep):
    vit = tiny_vit(num_classes=5, global_pool="token")
    layers = len(vit.blocks) if deep else 1
    trunk = PromptedViT(vit, torch.zeros(layers, 0, vit.embed_dim), "token").eval()
    with torch.no_grad():
        features = trunk(images)
        assert_close(features, vit.forward_head(vit.forward_features(images), pre_logits=True))
        assert_close(vit.head(features), vit(images))


def test_mean_pooling_includes_the_prompts(tiny_vit, images):
    """`avg` features are `norm` of the mean over every token after the class token, the prompts' outputs included;
    leaving them out of the mean gives other features."""
    vit = tiny_vit(global_pool="avg", fc_norm=False)
    prompts = _prompts_of_norm(1, 3, vit.embed_dim, 3.0, seed=1)
    trunk = PromptedViT(vit, prompts, "avg").eval()
    with torch.no_grad():
        *_, last = trunk.forward_tokens(images)
        with_prompts = vit.norm(last[:, 1:].mean(dim=1))
        without = vit.norm(last[:, 1 + 3:].mean(dim=1))
        assert_close(trunk(images), with_prompts)
        assert not torch.allclose(trunk(images), without)


def _register_twin(factory, base, prompts: torch.Tensor, **kwargs):
    """A timm ViT with N register tokens holding `prompts`, zero position for them, every other weight from `base`."""
    n = prompts.shape[1]
    twin = factory(reg_tokens=n, class_token=True, no_embed_class=False, **kwargs)
    assert twin.num_prefix_tokens == 1 + n
    state = {k: v.clone() for k, v in base.state_dict().items()}
    pos = state["pos_embed"]  # [cls, patches...]; timm's register layout is [cls, regs..., patches...]
    state["pos_embed"] = torch.cat([pos[:, :1], torch.zeros(1, n, pos.shape[-1]), pos[:, 1:]], dim=1)
    state["reg_token"] = prompts.clone()
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def test_vpt_shallow_equals_timm_register_tokens(tiny_vit, images):
    base = tiny_vit(global_pool="token")
    prompts = torch.randn(1, 3, base.embed_dim, generator=torch.Generator().manual_seed(3))
    twin = _register_twin(tiny_vit, base, prompts, global_pool="token")
    trunk = PromptedViT(base, prompts, "token").eval()
    with torch.no_grad():
        *_, last_tokens = trunk.forward_tokens(images)
        twin_tokens = twin.forward_features(images)
        assert last_tokens.shape == twin_tokens.shape
        assert_close(base.norm(last_tokens), twin_tokens)
        assert_close(trunk(images), twin.forward_head(twin_tokens, pre_logits=True))


def test_vpt_shallow_builder_prompts_act_as_register_tokens(micro_vit):
    """The prompts the real vpt-shallow builder makes, placed in a timm register-token twin of micro-vit, give
    the same features as the built trunk."""
    import timm

    from bench.backbone import MICRO_ARCH

    method = METHODS.get("vpt-shallow")
    config = method.config_cls.from_overrides({"num_prompts": "4"})
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    preprocess = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)
    ctx = BuildContext(micro_vit, 10, TensorSplit(imgs, torch.zeros(3, dtype=torch.long)), preprocess, gen,
                       torch.device("cpu"))
    adapted = method.build(config, ctx)
    prompts = adapted.trunk.prompts.detach()
    assert prompts.shape == (1, 4, micro_vit.num_features)

    pool = {"global_pool": "avg", "fc_norm": False} if micro_vit.pooling == "avg" else {"global_pool": "token"}
    twin = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=4,
                             class_token=True, no_embed_class=False, **MICRO_ARCH, **pool).eval()
    state = dict(micro_vit.model.state_dict())
    pos = state["pos_embed"]
    state["pos_embed"] = torch.cat([pos[:, :1], torch.zeros(1, 4, pos.shape[-1]), pos[:, 1:]], dim=1)
    state["reg_token"] = prompts.clone()
    twin.load_state_dict(state, strict=True)
    x = preprocess(imgs)
    adapted.trunk.eval()
    with torch.no_grad():
        assert_close(adapted.trunk(x), twin.forward_head(twin.forward_features(x), pre_logits=True))


def test_deep_prompts_replace_previous_prompt_outputs(tiny_vit, images):
    vit = tiny_vit(depth=3)
    n = 2
    prompts = torch.randn(3, n, vit.embed_dim, generator=torch.Generator().manual_seed(5))
    trunk = PromptedViT(vit, prompts, "token").eval()
    with torch.no_grad():
        entering = list(trunk.forward_tokens(images))[:-1]
    num_patches = vit.patch_embed.num_patches
    assert len(entering) == 3
    for i, tokens in enumerate(entering):
        assert tokens.shape == (images.shape[0], 1 + n + num_patches, vit.embed_dim)
        # The prompt slot entering block i holds prompt set i, exactly, for every image.
        assert torch.equal(tokens[:, 1:1 + n], prompts[i].expand(images.shape[0], -1, -1))


def test_deep_prompt_sets_each_influence_the_output(tiny_vit, images):
    """Every prompt set matters (none is silently skipped), and shallow differs from deep."""
    vit = tiny_vit(depth=3)
    prompts = torch.randn(3, 2, vit.embed_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = PromptedViT(vit, prompts, "token").eval()(images)
        for i in range(3):
            changed = prompts.clone()
            # Random, not constant: adding one number to every feature of a token is undone by the LayerNorm that
            # each block applies first, so such a change reaches the output only as rounding error.
            changed[i] += torch.randn(changed[i].shape, generator=torch.Generator().manual_seed(i))
            assert not torch.allclose(PromptedViT(vit, changed, "token").eval()(images), reference, atol=1e-3)
        assert not torch.allclose(PromptedViT(vit, prompts[:1], "token").eval()(images), reference)


def test_prompts_are_a_learnable_copy_and_backbone_is_shared(tiny_vit):
    vit = tiny_vit()
    prompts = torch.randn(1, 2, vit.embed_dim)
    trunk = PromptedViT(vit, prompts, "token")
    assert trunk.vit is vit
    assert trunk.prompts.requires_grad and trunk.prompts.data_ptr() != prompts.data_ptr()
    with pytest.raises(ValueError):
        PromptedViT(vit, torch.zeros(2, 0, vit.embed_dim + 1), "token")
