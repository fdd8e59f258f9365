"""Pre-trained ViT backbones: the paper's names, any timm ViT, and local checkpoints in the formats people have.

A backbone is always a timm `VisionTransformer` with its classifier removed. Local checkpoints are accepted as
timm/safetensors state dicts, JAX `.npz` files, MAE files (weights under `model`) and MoCo-v3 files (weights under
`state_dict` with a `module.base_encoder.` or `module.` prefix). Position embeddings are resampled by timm's own
checkpoint filter when the checkpoint was trained at another resolution.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from timm.data import resolve_data_config
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from bench import BenchError
from bench.registry import Registry

Pooling = Literal["token", "avg"]

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BackboneEntry:
    """How to build a named backbone.

    Attributes:
        timm_name: timm architecture, with a pretrained tag (`arch.tag`) when the hub holds the weights.
        pooling: `token` (CLS, supervised and MoCo-v3 convention) or `avg` (mean of patch tokens, MAE convention).
        arch_kwargs: overrides passed to `timm.create_model` (image size, depth, width, ...).
        packaged_weights: file name under `bench/weights/` shipped with the package, if any.
        hub_weights: whether `timm_name` carries hub weights; False means only `--weights PATH` gives pretrained ones.
        weights_hint: what to tell a user who has no weights for this backbone.
        mean, std: input normalisation when timm's pretrained config does not define it.
    """

    timm_name: str
    pooling: Pooling = "token"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    packaged_weights: str | None = None
    hub_weights: bool = True
    weights_hint: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


BACKBONES: Registry[BackboneEntry] = Registry("backbone")

MICRO_ARCH = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3)
DEFAULT_BACKBONE = "micro-mae"

BACKBONES.register(
    "micro-vit",
    BackboneEntry(
        "vit_tiny_patch16_224", "token", MICRO_ARCH, hub_weights=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    ),
    "ViT 32px/patch 4, width 192, 6 blocks, seeded random init (no pre-training): the offline suite's architecture",
)
BACKBONES.register(
    "micro-mae",
    BackboneEntry(
        "vit_tiny_patch16_224",
        "avg",
        MICRO_ARCH,
        packaged_weights="micro_mae.safetensors",
        hub_weights=False,
        weights_hint="bench/weights/micro_mae.safetensors, which `bench pretrain mae` regenerates",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
    "the micro architecture pre-trained offline with MAE (shipped; see bench/weights/MODEL_CARD.md); mean-pooled",
)
BACKBONES.register(
    "mae-vit-b16",
    BackboneEntry("vit_base_patch16_224.mae", "avg", weights_hint="MAE's mae_pretrain_vit_base.pth"),
    "ViT-B/16 pre-trained with MAE on ImageNet-1k (self-supervised); mean-pooled patch tokens",
)
BACKBONES.register(
    "mocov3-vit-b16",
    BackboneEntry(
        "vit_base_patch16_224",
        "token",
        hub_weights=False,
        weights_hint="MoCo-v3's vit-b-300ep.pth.tar (from the MoCo-v3 repository's model zoo)",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    "ViT-B/16 pre-trained with MoCo-v3 on ImageNet-1k (self-supervised); needs --weights PATH",
)
BACKBONES.register(
    "sup21k-vit-b16",
    BackboneEntry("vit_base_patch16_224.orig_in21k", "token", weights_hint="Google's imagenet21k ViT-B_16.npz"),
    "ViT-B/16 supervised on ImageNet-21k (the VPT paper's backbone)",
)


@dataclass
class Backbone:
    """A loaded, frozen-by-default ViT and everything a record needs to say about it."""

    name: str
    model: VisionTransformer
    pooling: Pooling
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_source: str
    checkpoint_sha256: str | None
    checkpoint_format: str | None

    @property
    def num_features(self) -> int:
        return self.model.num_features

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timm_arch": self.model.default_cfg.get("architecture", type(self.model).__name__),
            "pooling": self.pooling,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights_source": self.weights_source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_format": self.checkpoint_format,
            "num_params": self.num_params,
        }


def load_backbone(name: str, weights: str | Path | None = None, seed: int = 0) -> Backbone:
    """Build backbone `name` (a registered name or any timm ViT) with weights from `weights`, the package or the hub.

    Args:
        name: registered backbone name, or a timm model name such as `vit_small_patch16_224.augreg_in21k`.
        weights: local checkpoint file; overrides any packaged or hub weights.
        seed: seeds the random initialisation of backbones that have no weights.
    """
    entry = BACKBONES.get(name) if name in BACKBONES else _timm_entry(name)
    arch = entry.timm_name.split(".")[0]
    create_kwargs = dict(num_classes=0, global_pool=entry.pooling, **entry.arch_kwargs)
    if entry.pooling == "avg":
        # Keep the checkpoint's final `norm` before pooling instead of a fresh, untrained `fc_norm` after it.
        create_kwargs["fc_norm"] = False

    sha = fmt = None
    if weights is not None:
        model = create_vit(arch, create_kwargs, seed)
        fmt, sha = load_checkpoint(model, Path(weights))
        source = str(weights)
    elif entry.packaged_weights and (WEIGHTS_DIR / entry.packaged_weights).exists():
        model = create_vit(arch, create_kwargs, seed)
        fmt, sha = load_checkpoint(model, WEIGHTS_DIR / entry.packaged_weights)
        source = f"package:{entry.packaged_weights}"
    elif entry.hub_weights and "." in entry.timm_name:
        model = _create_from_hub(name, entry, create_kwargs)
        source = f"hub:{entry.timm_name}"
    elif entry.weights_hint:
        raise BenchError(
            f"backbone {name!r} has no weights here; pass --weights PATH to {entry.weights_hint}"
        )
    else:
        model = create_vit(arch, create_kwargs, seed)
        source = f"random-init(seed={seed})"

    model.requires_grad_(False)
    model.eval()
    data_cfg = resolve_data_config({}, model=model)
    return Backbone(
        name=name,
        model=model,
        pooling=entry.pooling,
        input_size=int(model.patch_embed.img_size[0]),
        mean=tuple(entry.mean or data_cfg["mean"]),
        std=tuple(entry.std or data_cfg["std"]),
        weights_source=source,
        checkpoint_sha256=sha,
        checkpoint_format=fmt,
    )


class LoadedBackbones:
    """Backbones this process has built, kept pristine so that the runs of a sweep pay the load once.

    The key is what the weights are, not where a run found them: the backbone's name, and for a checkpoint file its
    path, size and modification time (ns), so a replaced file is loaded afresh. Every run gets a deep copy, since
    methods set `requires_grad`, wrap modules and train weights in place. At most `capacity` backbones are held
    (the most recently used).
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.loads = 0
        self._held: dict[tuple[Any, ...], Backbone] = {}

    def get(self, name: str, weights: str | Path | None = None) -> Backbone:
        key = (name, *_file_identity(weights or _packaged_file(name)))
        backbone = self._held.pop(key, None)
        if backbone is None:
            backbone = load_backbone(name, weights)
            self.loads += 1
        self._held[key] = backbone  # re-inserted last: the dict's order is the recency order
        while len(self._held) > self.capacity:
            del self._held[next(iter(self._held))]
        return copy.deepcopy(backbone)


def _packaged_file(name: str) -> Path | None:
    entry = BACKBONES.get(name) if name in BACKBONES else None
    return WEIGHTS_DIR / entry.packaged_weights if entry is not None and entry.packaged_weights else None


def _file_identity(path: str | Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    try:
        stat = os.stat(path)
    except OSError:
        return (str(path),)  # load_backbone gives the user's error for a missing file
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def check_backbone_name(name: str) -> None:
    """Fail early, with the valid names, on a backbone that is neither registered nor a timm model."""
    if name not in BACKBONES:
        _timm_entry(name)


def _timm_entry(name: str) -> BackboneEntry:
    if not timm.is_model(name.split(".")[0]):
        raise BenchError(
            f"unknown backbone {name!r}; use a registered one ({', '.join(BACKBONES.names())}) "
            "or a timm ViT name (see timm.list_models('vit_*'))"
        )
    return BackboneEntry(name, "token", hub_weights="." in name)


def create_vit(arch: str, kwargs: dict[str, Any], seed: int) -> VisionTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if not isinstance(model, VisionTransformer):
        raise BenchError(f"timm model {arch!r} is a {type(model).__name__}; bench adapts timm VisionTransformer models")
    return model


def _create_from_hub(name: str, entry: BackboneEntry, kwargs: dict[str, Any]) -> VisionTransformer:
    try:
        model = timm.create_model(entry.timm_name, pretrained=True, **kwargs)
    except Exception as exc:  # timm/hub raise many types: offline, missing file, HTTP
        hint = f" ({entry.weights_hint})" if entry.weights_hint else ""
        raise BenchError(
            f"could not fetch hub weights for backbone {name!r} ({entry.timm_name}: {type(exc).__name__}); "
            f"connect to the internet or pass --weights PATH to a local checkpoint{hint}"
        ) from None
    if not isinstance(model, VisionTransformer):
        raise BenchError(f"timm model {entry.timm_name!r} is not a VisionTransformer; bench adapts ViTs only")
    return model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Keys that belong to a pre-training objective, not to the encoder a downstream task uses.
_TRAINING_ONLY_PREFIXES = ("decoder", "mask_token", "head.", "fc_norm.")


def load_checkpoint(model: VisionTransformer, path: Path) -> tuple[str, str]:
    """Load a local checkpoint into `model` in place; return (format, sha256 of the file)."""
    if not path.is_file():
        raise BenchError(f"checkpoint {path} does not exist; pass --weights a .pth, .pth.tar, .safetensors or .npz file")
    sha = sha256_file(path)
    if path.suffix == ".npz":
        try:
            model.load_pretrained(str(path))
        except KeyError as exc:
            raise BenchError(f"{path} is not a JAX ViT checkpoint for this architecture (missing {exc})") from None
        return "npz", sha

    raw = _read_state(path)
    state, fmt = unwrap_state_dict(raw)
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise BenchError(
            f"checkpoint {path} ({fmt} form) has other shapes than {model.default_cfg.get('architecture')} "
            f"(width {model.embed_dim}): {wrong[0]}{', ...' if len(wrong) > 1 else ''}; pass weights for the same ViT size"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BenchError(
            f"checkpoint {path} ({fmt} form) does not fit {model.default_cfg.get('architecture')}: "
            f"missing {_short(missing)}, unexpected {_short(unexpected)}; pass weights for the same ViT size"
        )
    return fmt, sha


def _read_state(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # MAE and MoCo-v3 files pickle their argparse namespace beside the weights; the user chose this file.
            raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch and safetensors raise many types on a file that is not theirs
        raise BenchError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); expected a torch .pth/.pth.tar, .safetensors "
            "or .npz file"
        ) from None
    if not isinstance(raw, dict):
        raise BenchError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict; pass a ViT checkpoint")
    return raw


def unwrap_state_dict(raw: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Return the encoder's timm-named state dict and the format it came in: `mae`, `mocov3` or `timm`."""
    if isinstance(raw.get("model"), dict):
        return raw["model"], "mae"
    if isinstance(raw.get("state_dict"), dict):
        state = raw["state_dict"]
        for prefix in ("module.base_encoder.", "module."):
            if any(k.startswith(prefix) for k in state):
                return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, "mocov3"
        return state, "mocov3"
    return raw, "timm"


def _short(keys: list[str]) -> str:
    return "[" + ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "") + "]" if keys else "[]"


class ViTFeatures(nn.Module):
    """timm's own forward up to the pre-logits features, with its pooling and final norm."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.vit.forward_features(images), pre_logits=True)
