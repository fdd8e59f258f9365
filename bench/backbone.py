"""Pre-trained ViT backbones: the paper's names, any timm ViT, and local checkpoints in the formats people have.

A backbone is always a timm `VisionTransformer` with its classifier removed. Local checkpoints are accepted as
timm/safetensors state dicts, JAX `.npz` files, MAE files (weights under `model`) and MoCo-v3 files (weights under
`state_dict` with a `module.base_encoder.` or `module.` prefix). Position embeddings are resampled by timm's own
checkpoint filter when the checkpoint was trained at another resolution.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from bench import BenchError
from bench.registry import Registry

Pooling = Literal["token", "avg"]
# What the weights were pre-trained with; recipes resolve their values per objective (see bench.recipes).
Objective = Literal["mae", "mocov3", "supervised", "dinov2", "clip", "none"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# OpenAI CLIP's image statistics (its clip/clip.py `_transform`), which timm's CLIP configs repeat.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BackboneEntry:
    """How to build a named backbone.

    Attributes:
        timm_name: timm architecture, with a pretrained tag (`arch.tag`) when the hub holds the weights.
        mean, std: the input normalisation the weights were trained with. It belongs to the weights, not to where
            they come from: the same for hub weights, `--weights PATH` and packaged weights.
        objective: the pre-training objective, which recipes key their per-backbone values on.
        pooling: `token` (CLS, supervised and MoCo-v3 convention) or `avg` (MAE convention; see `pool_features`).
        arch_kwargs: overrides passed to `timm.create_model` (image size, depth, width, ...).
        packaged_weights: file name under `bench/weights/` shipped with the package, if any.
        hub_weights: whether `timm_name` carries hub weights; False means only `--weights PATH` gives pretrained ones.
        weights_hint: what to tell a user who has no weights for this backbone.
        variant: which weights these are, as published tables tell them apart (`orig_in21k` and `augreg_in21k` are
            both supervised ImageNet-21k ViT-B/16s; a timm name's tag otherwise); `bench report --published` flags a
            paper's number whose variant is not the run's.
    """

    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    objective: Objective
    pooling: Pooling = "token"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    packaged_weights: str | None = None
    hub_weights: bool = True
    weights_hint: str = ""
    variant: str = ""


BACKBONES: Registry[BackboneEntry] = Registry("backbone")

MICRO_ARCH = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3)
DEFAULT_BACKBONE = "micro-mae"

BACKBONES.register(
    "micro-vit",
    BackboneEntry("vit_tiny_patch16_224", HALF, HALF, "none", "token", MICRO_ARCH, hub_weights=False,
                  variant="random_init"),
    "ViT 32px/patch 4, width 192, 6 blocks, seeded random init (no pre-training): the offline suite's architecture",
)
BACKBONES.register(
    "micro-mae",
    BackboneEntry(
        "vit_tiny_patch16_224",
        HALF,  # what `bench pretrain mae` normalises with
        HALF,
        "mae",
        "avg",
        MICRO_ARCH,
        packaged_weights="micro_mae.safetensors",
        hub_weights=False,
        weights_hint="bench/weights/micro_mae.safetensors, which `bench pretrain mae` regenerates",
        variant="micro_mae",
    ),
    "the micro architecture pre-trained offline with MAE (shipped; see bench/weights/MODEL_CARD.md); mean-pooled",
)
BACKBONES.register(
    "micro-mae-init",
    # The "no pre-training" control of micro-mae: its architecture, normalisation and pooling, and its objective so
    # that recipes give both the same hyper-parameters; only the weights differ (seeded random init, as micro-vit).
    BackboneEntry("vit_tiny_patch16_224", HALF, HALF, "mae", "avg", MICRO_ARCH, hub_weights=False,
                  variant="random_init"),
    "micro-mae with seeded random weights instead of pre-trained ones (the 'no pre-training' control); mean-pooled",
)
BACKBONES.register(
    "mae-vit-b16",
    # MAE pre-trains with ImageNet's mean/std (its main_pretrain.py), whatever file the weights arrive in.
    BackboneEntry(
        "vit_base_patch16_224.mae", IMAGENET_MEAN, IMAGENET_STD, "mae", "avg",
        weights_hint="MAE's mae_pretrain_vit_base.pth", variant="mae_in1k",
    ),
    "ViT-B/16 pre-trained with MAE on ImageNet-1k (self-supervised); mean-pooled patch tokens",
)
BACKBONES.register(
    "mocov3-vit-b16",
    BackboneEntry(
        "vit_base_patch16_224",
        IMAGENET_MEAN,
        IMAGENET_STD,
        "mocov3",
        "token",
        hub_weights=False,
        weights_hint="MoCo-v3's vit-b-300ep.pth.tar (from the MoCo-v3 repository's model zoo)",
        variant="mocov3_in1k",
    ),
    "ViT-B/16 pre-trained with MoCo-v3 on ImageNet-1k (self-supervised); needs --weights PATH",
)
# Two supervised ImageNet-21k ViT-B/16s, one architecture, different weights: Google's original release (what VPT,
# NOAH and PETL_Vision load, as `ViT-B_16.npz`) and AugReg's (what timm's `vit_base_patch16_224_in21k` meant from
# timm 0.4.12 to 0.6.x: the SPT code's timm 0.6.0 and SSF's 0.6.5). Both were trained on [-1, 1] inputs.
BACKBONES.register(
    "sup21k-vit-b16",
    BackboneEntry(
        "vit_base_patch16_224.orig_in21k", HALF, HALF, "supervised", "token",
        weights_hint="Google's imagenet21k ViT-B_16.npz", variant="orig_in21k",
    ),
    "ViT-B/16 supervised on ImageNet-21k, Google's original weights (the VPT and NOAH papers' backbone)",
)
BACKBONES.register(
    "sup21k-augreg-vit-b16",
    BackboneEntry(
        "vit_base_patch16_224.augreg_in21k", HALF, HALF, "supervised", "token",
        weights_hint="AugReg's B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz", variant="augreg_in21k",
    ),
    "ViT-B/16 supervised on ImageNet-21k with AugReg (the SPT and SSF papers' backbone)",
)
# DINOv2 trains at 518 px; at bench's 224 px inputs timm's checkpoint filter resamples the 37×37 position embedding
# to 16×16 patches of 14 px, as `timm.create_model(..., img_size=224)` does for its own users.
DINOV2_224 = dict(img_size=224)
BACKBONES.register(
    "dinov2-vit-b14",
    BackboneEntry(
        "vit_base_patch14_dinov2.lvd142m", IMAGENET_MEAN, IMAGENET_STD, "dinov2", "token", DINOV2_224,
        weights_hint="the timm hub copy of vit_base_patch14_dinov2.lvd142m (model.safetensors) or DINOv2's "
                     "dinov2_vitb14_pretrain.pth",
        variant="dinov2_lvd142m",
    ),
    "ViT-B/14 pre-trained with DINOv2 on LVD-142M (self-supervised, LayerScale); class token; 224 px",
)
BACKBONES.register(
    "dinov2-reg4-vit-b14",
    BackboneEntry(
        "vit_base_patch14_reg4_dinov2.lvd142m", IMAGENET_MEAN, IMAGENET_STD, "dinov2", "token", DINOV2_224,
        weights_hint="the timm hub copy of vit_base_patch14_reg4_dinov2.lvd142m (model.safetensors)",
        variant="dinov2_reg4_lvd142m",
    ),
    "ViT-B/14 pre-trained with DINOv2 and 4 register tokens on LVD-142M; class token; 224 px",
)
# OpenAI's CLIP image tower uses QuickGELU; timm's `_clip_224` architecture takes the same weights with exact GELU
# (its config says so), so the `quickgelu` architecture is the faithful one.
BACKBONES.register(
    "clip-vit-b16",
    BackboneEntry(
        "vit_base_patch16_clip_quickgelu_224.openai", CLIP_MEAN, CLIP_STD, "clip", "token",
        weights_hint="the timm hub copy of vit_base_patch16_clip_224.openai (model.safetensors)",
        variant="clip_openai",
    ),
    "ViT-B/16 image tower of OpenAI's CLIP (QuickGELU, pre-norm); class token before the image projection",
)


@dataclass
class Backbone:
    """A loaded, frozen-by-default ViT and everything a record needs to say about it."""

    name: str
    model: VisionTransformer
    pooling: Pooling
    objective: Objective
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_source: str
    checkpoint_sha256: str | None
    checkpoint_format: str | None
    variant: str = ""  # BackboneEntry.variant

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
            "objective": self.objective,
            "variant": self.variant,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights_source": self.weights_source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_format": self.checkpoint_format,
            "num_params": self.num_params,
        }


def load_backbone(name: str, weights: str | Path | None = None, seed: int = 0, drop_path: float = 0.0) -> Backbone:
    """Build backbone `name` (a registered name or any timm ViT) with weights from `weights`, the package or the hub.

    Args:
        name: registered backbone name, or a timm model name such as `vit_small_patch16_224.augreg_in21k`.
        weights: local checkpoint file; overrides any packaged or hub weights.
        seed: seeds the random initialisation of backbones that have no weights.
        drop_path: stochastic depth rate of the blocks (active in train mode only).
    """
    entry = backbone_entry(name)
    arch = entry.timm_name.split(".")[0]
    create_kwargs = dict(num_classes=0, global_pool=entry.pooling, drop_path_rate=drop_path, **entry.arch_kwargs)
    if entry.pooling == "avg":
        # Keep the checkpoint's final `norm` (applied after pooling, see `pool_features`) instead of a fresh,
        # untrained `fc_norm`.
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
    return Backbone(
        name=name,
        model=model,
        pooling=entry.pooling,
        objective=entry.objective,
        variant=entry.variant,
        input_size=int(model.patch_embed.img_size[0]),
        mean=entry.mean,
        std=entry.std,
        weights_source=source,
        checkpoint_sha256=sha,
        checkpoint_format=fmt,
    )


def backbone_entry(name: str) -> BackboneEntry:
    """The registered entry, or one made for any timm ViT name; raises a one-line error listing valid names."""
    return BACKBONES.get(name) if name in BACKBONES else _timm_entry(name)


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

    def get(self, name: str, weights: str | Path | None = None, drop_path: float = 0.0) -> Backbone:
        """A copy of the backbone for one run to adapt and train, loaded once."""
        return copy.deepcopy(self._held_backbone(name, weights, drop_path))

    def hold(self, name: str, weights: str | Path | None = None) -> None:
        """Load the backbone (unless held) and hold it: a grid's pre-flight check, which loads every backbone to fail
        early, then costs its runs nothing."""
        self._held_backbone(name, weights, 0.0)

    def _held_backbone(self, name: str, weights: str | Path | None, drop_path: float) -> Backbone:
        key = (name, drop_path, *_file_identity(weights or _packaged_file(name)))
        backbone = self._held.pop(key, None)
        if backbone is None:
            backbone = load_backbone(name, weights, drop_path=drop_path)
            self.loads += 1
        self._held[key] = backbone  # re-inserted last: the dict's order is the recency order
        while len(self._held) > self.capacity:
            del self._held[next(iter(self._held))]
        return backbone


def _packaged_file(name: str) -> Path | None:
    entry = backbone_entry(name)
    return WEIGHTS_DIR / entry.packaged_weights if entry.packaged_weights else None


def _file_identity(path: str | Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    try:
        stat = os.stat(path)
    except OSError:
        return (str(path),)  # load_backbone gives the user's error for a missing file
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def _timm_entry(name: str) -> BackboneEntry:
    if not timm.is_model(name.split(".")[0]):
        raise BenchError(
            f"unknown backbone {name!r}; use a registered one ({', '.join(BACKBONES.names())}) "
            "or a timm ViT name (see timm.list_models('vit_*'))"
        )
    # timm's pretrained config of the named tag holds the normalisation its weights were trained with; asking for it
    # reads timm's tables, not the hub, so `--weights` files of that tag are normalised like the hub's copy.
    cfg = timm.models.get_pretrained_cfg(name)
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else (IMAGENET_MEAN, IMAGENET_STD)
    arch, _, tag = name.partition(".")
    objective: Objective = ("mae" if "mae" in tag else "dinov2" if "dinov2" in arch else "clip" if "_clip_" in arch
                            else "supervised")
    return BackboneEntry(name, mean, std, objective, "avg" if objective == "mae" else "token", hub_weights=bool(tag),
                         variant=tag)


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
        except RuntimeError as exc:  # timm copies each array into the model: another width does not fit
            raise BenchError(
                f"checkpoint {path} (npz form) has other shapes than {model.default_cfg.get('architecture')} "
                f"(width {model.embed_dim}): {exc}; pass weights for the same ViT size"
            ) from None
        return "npz", sha

    raw = _read_state(path)
    state, fmt = unwrap_state_dict(raw)
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd or not state:
        what = f"non-tensor entries ({_short(odd)})" if odd else "no weights"
        raise BenchError(f"checkpoint {path} ({fmt} form) holds {what} where a ViT state dict was expected; "
                         "pass a timm, MAE or MoCo-v3 ViT checkpoint")
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:  # timm's converter assumes ViT keys; anything else fails inside it in many ways
        raise BenchError(f"checkpoint {path} ({fmt} form) does not convert to a timm ViT ({type(exc).__name__}: "
                         f"{exc}); pass a timm, MAE or MoCo-v3 ViT checkpoint") from None
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


# What MAE and MoCo-v3 training checkpoints pickle beside their tensors (MAE: the run's argparse namespace). Nothing
# else is let through: unpickling any other global can run arbitrary code, whoever made the file.
SAFE_GLOBALS = (argparse.Namespace,)


def _read_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        # torch warns about pickle protocols it did not write; the errors below say what matters, in one line.
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, str(exc))
        if not unsafe:
            raise BenchError(f"cannot read checkpoint {path} (not a valid torch pickle); expected a torch "
                             ".pth/.pth.tar, .safetensors or .npz file") from None
        shown = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
        raise BenchError(
            f"refusing to load checkpoint {path}: it pickles {shown}, which could run code on loading; bench loads "
            "only tensors, containers and argparse.Namespace. Convert it to .safetensors where you trust it"
        ) from None
    except Exception as exc:  # torch raises many types on a file that is not its own
        raise BenchError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); expected a torch .pth/.pth.tar, .safetensors "
            "or .npz file"
        ) from None
    if not isinstance(raw, dict):
        raise BenchError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict; pass a ViT checkpoint")
    return raw


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own and OS errors on a file that is not its own
        raise BenchError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); expected a .safetensors file"
        ) from None


def _unsafe_globals(path: Path, error: str) -> list[str]:
    """The globals a refused file would import: read from a zip checkpoint's pickle opcodes without executing any,
    else from torch's refusal (legacy files); empty when the file is simply not a pickle."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format: a legacy file, or no checkpoint at all
        names = re.findall(r"GLOBAL ([\w.]+)", error)
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [name for name in dict.fromkeys(names) if name not in allowed]


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


def embed(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The token sequence entering block 0: timm's patch embedding, class/register tokens and position embedding."""
    return with_position(vit, vit.patch_embed(images))


def with_position(vit: VisionTransformer, patches: torch.Tensor) -> torch.Tensor:
    """Patch embeddings -> the sequence entering block 0 (class/register tokens, position embedding, pre-norm)."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(patches)))


def pool_features(vit: VisionTransformer, tokens: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pre-logits features from the last block's output tokens (before the final norm), as the SPT reference pools
    (`Models/MAE_vpt_deep.py`): `token` takes the class token through `norm`; `avg` averages every token after the
    prefix (class and register tokens) — prompts included, as the SPT and VPT MAE models do — and then applies the
    checkpoint's `norm` to that mean. (timm instead normalises every token before pooling.)"""
    if pooling == "token":
        pooled = vit.norm(tokens[:, 0])
    else:
        pooled = vit.norm(tokens[:, vit.num_prefix_tokens:].mean(dim=1))
    return vit.head_drop(vit.fc_norm(pooled))


def fresh_pool_norm(vit: VisionTransformer) -> None:
    """Put a new LayerNorm (weight 1, bias 0, the checkpoint's eps), frozen, in place of `vit.norm`, the norm
    `pool_features` applies to the pooled mean: VPT's MAE models delete the checkpoint's `norm` and pool through a
    fresh `fc_norm` (src/models/vit_backbones/vit_mae.py:21-25) that the checkpoint does not hold (loaded with
    strict=False, src/models/build_vit_backbone.py:56-60) and that never trains (src/models/vit_models.py:319-322)."""
    fresh = nn.LayerNorm(vit.embed_dim, eps=vit.norm.eps)
    fresh.requires_grad_(False)
    vit.norm = fresh


class ViTFeatures(nn.Module):
    """A timm ViT's own modules up to the pre-logits features, pooled as `pool_features` defines."""

    def __init__(self, vit: VisionTransformer, pooling: Pooling) -> None:
        super().__init__()
        self.vit = vit
        self.pooling = pooling

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pool_features(self.vit, self.vit.blocks(embed(self.vit, images)), self.pooling)
