"""Local checkpoints in the formats people have, written here in their real on-disk forms, loaded into micro-vit."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from bench import BenchError
from bench.backbone import MICRO_ARCH, load_backbone, load_checkpoint


def _source(seed: int = 123, **overrides) -> dict[str, torch.Tensor]:
    """A micro-vit-shaped encoder's state dict whose weights differ from micro-vit's own seeded init."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **{**MICRO_ARCH, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_timm_pth(path: Path, state):
    torch.save(state, path)


def _write_safetensors(path: Path, state):
    save_file(state, str(path))


def _write_mae(path: Path, state):
    d = state["cls_token"].shape[-1]
    extra = {
        "mask_token": torch.randn(1, 1, 16),
        "decoder_embed.weight": torch.randn(16, d),
        "decoder_embed.bias": torch.randn(16),
        "decoder_pos_embed": torch.randn(1, 65, 16),
        "decoder_blocks.0.norm1.weight": torch.randn(16),
        "decoder_norm.weight": torch.randn(16),
        "decoder_pred.weight": torch.randn(48, 16),
    }
    torch.save({"model": {**state, **extra}, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4}]},
                "epoch": 3, "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_micro")}, path)


def _write_mocov3(path: Path, state):
    momentum = _source(seed=999)
    d = state["cls_token"].shape[-1]
    sd = {f"module.base_encoder.{k}": v for k, v in state.items()}
    sd |= {f"module.momentum_encoder.{k}": v for k, v in momentum.items()}
    sd |= {"module.base_encoder.head.0.weight": torch.randn(64, d), "module.predictor.0.weight": torch.randn(64, 64)}
    torch.save({"epoch": 300, "arch": "vit_micro", "state_dict": sd, "optimizer": {"state": {}}}, path)


def _write_module_prefix(path: Path, state):
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)


FORMATS = {
    # name: (file name, writer, expected format)
    "timm-pth": ("encoder.pth", _write_timm_pth, "timm"),
    "timm-safetensors": ("encoder.safetensors", _write_safetensors, "timm"),
    "mae": ("mae_pretrain.pth", _write_mae, "mae"),
    "mocov3": ("vit-micro-300ep.pth.tar", _write_mocov3, "mocov3"),
    "module-prefix": ("checkpoint.pth.tar", _write_module_prefix, "mocov3"),
}



def _write_jax_npz(path: Path, state: dict[str, torch.Tensor], num_heads: int) -> None:
    """Google's ViT `.npz` (google-research/vision_transformer, e.g. imagenet21k `ViT-B_16.npz`), written from a timm
    state dict: flax names, convolution kernels HWIO, dense kernels in×out, attention kernels split per head."""
    width = state["cls_token"].shape[-1]
    per_head = width // num_heads
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    w = {
        "embedding/kernel": state["patch_embed.proj.weight"].permute(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": torch.zeros(width, 21843),  # the checkpoint's classifier, which a backbone drops
        "head/bias": torch.zeros(21843),
    }
    for i in range(depth):
        block, flax = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        for torch_norm, flax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{flax}{flax_norm}/scale"] = state[f"{block}{torch_norm}.weight"]
            w[f"{flax}{flax_norm}/bias"] = state[f"{block}{torch_norm}.bias"]
        attention = f"{flax}MultiHeadDotProductAttention_1/"
        weights = state[f"{block}attn.qkv.weight"].chunk(3)
        biases = state[f"{block}attn.qkv.bias"].chunk(3)
        for name, weight, bias in zip(("query", "key", "value"), weights, biases):
            w[f"{attention}{name}/kernel"] = weight.T.reshape(width, num_heads, per_head)
            w[f"{attention}{name}/bias"] = bias.reshape(num_heads, per_head)
        w[f"{attention}out/kernel"] = state[f"{block}attn.proj.weight"].T.reshape(num_heads, per_head, width)
        w[f"{attention}out/bias"] = state[f"{block}attn.proj.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            w[f"{flax}MlpBlock_3/{dense}/kernel"] = state[f"{block}mlp.{fc}.weight"].T
            w[f"{flax}MlpBlock_3/{dense}/bias"] = state[f"{block}mlp.{fc}.bias"]
    with path.open("wb") as fh:
        np.savez(fh, **{name: tensor.numpy() for name, tensor in w.items()})


def test_a_jax_npz_checkpoint_loads_into_the_backbone_and_gives_the_source_models_features(tmp_path, images):
    state = _source()
    path = tmp_path / "ViT-micro.npz"
    _write_jax_npz(path, state, MICRO_ARCH["num_heads"])
    backbone = load_backbone("micro-vit", weights=path)
    assert (backbone.checkpoint_format, backbone.checkpoint_sha256) == ("npz", _sha256(path))
    _assert_holds(backbone.model, state)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **MICRO_ARCH).eval()
    source.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(images), source(images), rtol=0, atol=0)


@pytest.mark.parametrize("other, message", [
    (dict(depth=4), r"is not a JAX ViT checkpoint for this architecture \(missing .*encoderblock_4"),
    (dict(embed_dim=96), r"other shapes than .* \(width 192\): .*96.*; pass weights for the same ViT size"),
], ids=["depth", "width"])
def test_a_jax_npz_checkpoint_of_another_size_is_a_one_line_bench_error(tmp_path, other, message):
    path = tmp_path / "ViT-other.npz"
    _write_jax_npz(path, _source(**other), MICRO_ARCH["num_heads"])
    with pytest.raises(BenchError, match=message) as info:
        load_backbone("micro-vit", weights=path)
    assert "\n" not in str(info.value)

def _assert_holds(model, state):
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), f"{key} was not loaded from the checkpoint"


@pytest.mark.parametrize("form", list(FORMATS))
def test_checkpoint_formats_load_every_encoder_weight(tmp_path, form):
    name, write, expected_format = FORMATS[form]
    state = _source()
    path = tmp_path / name
    write(path, state)

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **MICRO_ARCH)
    fmt, sha = load_checkpoint(model, path)
    assert fmt == expected_format
    assert sha == _sha256(path)
    _assert_holds(model, state)

    backbone = load_backbone("micro-vit", weights=path)
    _assert_holds(backbone.model, state)
    assert backbone.checkpoint_format == expected_format
    assert backbone.checkpoint_sha256 == _sha256(path)
    assert backbone.weights_source == str(path)
    assert not any(p.requires_grad for p in backbone.model.parameters())
    # The weights really came from the file, not from micro-vit's own init.
    fresh = load_backbone("micro-vit").model.state_dict()
    assert not torch.equal(fresh["pos_embed"], backbone.model.state_dict()["pos_embed"])


def test_mocov3_loads_the_base_encoder_not_the_momentum_encoder(tmp_path):
    path = tmp_path / "vit-micro-300ep.pth.tar"
    state = _source()
    _write_mocov3(path, state)
    backbone = load_backbone("micro-vit", weights=path)
    momentum = _source(seed=999)
    assert not torch.equal(backbone.model.state_dict()["blocks.0.attn.qkv.weight"], momentum["blocks.0.attn.qkv.weight"])
    _assert_holds(backbone.model, state)


def test_checkpoint_at_another_resolution_has_pos_embed_resampled_like_timm(tmp_path):
    state = _source(img_size=64)  # a 16×16 patch grid; micro-vit has 8×8
    assert state["pos_embed"].shape[1] == 1 + 16 * 16
    path = tmp_path / "encoder_64px.pth"
    torch.save(state, path)
    backbone = load_backbone("micro-vit", weights=path)
    loaded = backbone.model.state_dict()
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(8, 8), num_prefix_tokens=1)
    assert loaded["pos_embed"].shape == (1, 1 + 64, MICRO_ARCH["embed_dim"])
    torch.testing.assert_close(loaded["pos_embed"], expected)
    _assert_holds(backbone.model, {k: v for k, v in state.items() if k != "pos_embed"})


def test_checkpoint_of_another_width_is_a_one_line_bench_error(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save(_source(embed_dim=96, num_heads=3), path)
    with pytest.raises(BenchError) as info:
        load_backbone("micro-vit", weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert "96" in message and any(word in message.lower() for word in ("width", "shape", "size"))


def test_missing_checkpoint_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_backbone("micro-vit", weights=tmp_path / "nope.pth")


def test_file_that_is_no_checkpoint_is_a_bench_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(BenchError):
        load_backbone("micro-vit", weights=path)


class _WritesMarker:
    """Unpickling this object writes a file: the shape of a checkpoint crafted to run code on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


# The zip format is scanned for every global without unpickling; a legacy file names the first one torch refused
# (protocol 2 pickles `Path.write_text` as `getattr(Path, "write_text")`).
@pytest.mark.parametrize("zip_format, named", [(True, "pathlib"), (False, "getattr")], ids=["zip", "legacy"])
def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, zip_format, named):
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.pth"
    torch.save({"model": _source(), "payload": _WritesMarker(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(BenchError) as info:
        load_backbone("micro-vit", weights=path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"refusing to load checkpoint {path}: it pickles ")
    assert named in message
    assert not marker.exists()
    # The file is what it claims to be: an unrestricted load does run its code.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_bytes_that_are_no_pickle_are_unreadable_not_refused(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(BenchError, match=r"^cannot read checkpoint .*noise.pth \(not a valid torch pickle\)"):
        load_backbone("micro-vit", weights=path)


def test_state_dict_of_other_keys_or_non_tensors_is_a_one_line_bench_error(tmp_path):
    wrong_keys = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, wrong_keys)
    with pytest.raises(BenchError, match="does not fit .*missing .*unexpected .*conv1.weight"):
        load_backbone("micro-vit", weights=wrong_keys)
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"model": {"epoch": 3, "lr": 0.1}}, not_tensors)
    with pytest.raises(BenchError, match=r"non-tensor entries \(\[epoch, lr\]\)"):
        load_backbone("micro-vit", weights=not_tensors)
