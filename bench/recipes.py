"""Recipes: the reference code's protocol, by name, resolved per backbone objective and task family.

A recipe is what a paper's code actually ran: optimiser, learning rate and weight decays per pre-training objective
(the SPT reference uses lr 5e-2 on MAE and 1e-3 on MoCo-v3 and supervised backbones), schedule, batch, the grid
the `tune` protocol searches on val, the final stage's seeds, and the pipeline around the method (`bench.protocol`:
normalisation, image pipelines, head init, `drop_last`, precision, prompt images). Each value names the file it
comes from, so a reader can check it.

Every table of a recipe is keyed by scope: a task (`cifar100`: SSF's scripts set lr per task),
`<family>/<objective>` (`fgvc/mocov3`), a task family (`fgvc`, `vtab`, `micro`), an objective (`mae`, `mocov3`,
`supervised`, `none`) or `*`; the first key that matches, in that order, gives the values. The paper recipes define
their pipeline for the families their papers ran (FGVC and VTAB-1k); the micro suite keeps the harness's own
pipeline, on which its committed study ran.

Resolution, lowest to highest priority: the method's config defaults, the recipe's values for the backbone's
objective, the recipe's values for the method (`method_values`: VPT-deep's prompt dropout, each method's learning rate
under `shared`), then the user's `--set` (which also sets protocol values: `--set precision=auto`). A method that a
recipe is the default for (`default_for`) runs under it unless `--recipe` names another one or `none` (the config
defaults).
Epochs stay the task's (100 on FGVC and VTAB-1k, as the references train); a recipe's warm-up is a fraction of them
(`warmup_fraction`: 10 of 100 epochs in most references, 20 in AdaptFormer's), so a shorter task keeps the reference's
shape of schedule.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from bench import BenchError, protocol
from bench.backbone import backbone_entry
from bench.config import RunSpec
from bench.data import TASKS
from bench.method import METHODS
from bench.protocol import Protocol
from bench.registry import Registry

# `--recipe` values that are not registry names.
DEFAULT = "default"  # each method's own default recipe, if it has one
NONE = "none"  # the methods' config defaults, no recipe
# The seeds runs take when `--seeds` is not given, but for a final stage whose recipe names its own.
DEFAULT_SEEDS = (0,)


@dataclass(frozen=True)
class Recipe:
    """A named set of reference hyper-parameters.

    Attributes:
        methods: method names or globs the recipe applies to.
        default_for: methods (globs) that run under this recipe when no `--recipe` is given.
        values: scope -> hyper-parameters (see the module docstring for scopes).
        search: scope -> the grid the `tune` protocol searches on val (hyper-parameter -> values).
        protocol: scope -> pipeline values (`bench.protocol.Protocol`); a scope with none keeps the harness's.
        method_values: method (glob) -> scope -> hyper-parameters over `values` for the methods it matches (the first
            glob that matches), so a value that belongs to one method is explicit.
        lr_factors: when set, the tune grid's learning rates are each method's resolved lr times these factors (a
            grid centred on the method's own lr), before `search`'s axes.
        final_seeds: the seeds of the final stage when `--seeds` is not given; empty: `DEFAULT_SEEDS`.
        warmup_fraction: warm-up length as a fraction of the run's epochs; None leaves `warmup_epochs` as resolved.
        sources: hyper-parameter (or topic) -> the reference file and line it comes from.
        departures: where `bench` does not do what the reference code does, one line each (docs/recipes.md).
    """

    methods: tuple[str, ...]
    values: dict[str, dict[str, Any]]
    search: dict[str, dict[str, list[Any]]]
    default_for: tuple[str, ...] = ()
    protocol: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_values: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    lr_factors: tuple[float, ...] = ()
    final_seeds: tuple[int, ...] = ()
    warmup_fraction: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    departures: tuple[str, ...] = ()

    def applies_to(self, method: str) -> bool:
        return any(fnmatch.fnmatchcase(method, pattern) for pattern in self.methods)

    def values_for(self, objective: str, family: str = "", method: str = "", task: str = "") -> dict[str, Any]:
        """The scope's values, with those of the first `method_values` glob that matches `method` on top."""
        values = _scoped(self.values, family, objective, task)
        for pattern, table in self.method_values.items():
            if fnmatch.fnmatchcase(method, pattern):
                return {**values, **_scoped(table, family, objective, task)}
        return values

    def search_for(self, objective: str, family: str = "", task: str = "") -> dict[str, list[Any]]:
        return _scoped(self.search, family, objective, task)

    def protocol_for(self, objective: str, family: str, task: str = "") -> dict[str, Any]:
        return _scoped(self.protocol, family, objective, task)


def _scoped(table: dict[str, dict[str, Any]], family: str, objective: str, task: str = "") -> dict[str, Any]:
    """The values of the first scope of `table` that matches: task, family/objective, family, objective, `*`."""
    for scope in (task, f"{family}/{objective}", family, objective, "*"):
        if scope in table:
            return dict(table[scope])
    return {}


def task_family(task: str) -> str:
    """`fgvc`, `vtab` or `micro`: the part of the task's group before `/`."""
    return TASKS.get(task).group.split("/")[0]


RECIPES: Registry[Recipe] = Registry("recipe")

_SPT = "SinAxCosB/Self-Prompt-Tuning"
_VPT = "KMnP/vpt"
_SPT_MAE_LR = 5e-2
_SPT_OTHER_LR = 1e-3

# SPT's pipeline on the families its paper ran (Dataset/FGVC.py, Dataset/VTAB.py, train*.py).
_SPT_PIPELINE = dict(normalisation="imagenet", drop_last=True, precision="fp32", prompt_images="train",
                     shallow_init="sampled")
_SPT_PROTOCOL = {
    "fgvc": _SPT_PIPELINE,  # FGVC's own pipeline is SPT's (tasks/fgvc.py)
    "vtab": {**_SPT_PIPELINE, "transforms": "spt-vtab"},
}
_SPT_PROTOCOL.update({f"{family}/mocov3": {**values, "head_init": "trunc-normal-0.01"}
                      for family, values in list(_SPT_PROTOCOL.items())})
_SPT_OTHER = dict(optimizer="adamw", lr=_SPT_OTHER_LR, min_lr=1e-8, weight_decay=1e-2, head_weight_decay=3.0,
                  batch_size=32, lr_step="batch", drop_path=0.0)

RECIPES.register(
    "spt-paper",
    Recipe(
        methods=("spt-*", "vpt-*"),
        default_for=("spt-*",),
        values={
            "mae": dict(optimizer="adamw", lr=_SPT_MAE_LR, min_lr=1e-8, weight_decay=1e-2, head_weight_decay=0.5,
                        batch_size=32, lr_step="batch", drop_path=0.0),
            "mocov3": {**_SPT_OTHER, "init_images": 1},
            "*": _SPT_OTHER,
        },
        # The reference publishes one learning rate per objective; the grid brackets it by a factor of 2.
        search={
            "mae": {"lr": [2 * _SPT_MAE_LR, _SPT_MAE_LR, _SPT_MAE_LR / 2]},
            "*": {"lr": [2 * _SPT_OTHER_LR, _SPT_OTHER_LR, _SPT_OTHER_LR / 2]},
        },
        protocol=_SPT_PROTOCOL,
        warmup_fraction=0.1,
        sources={
            "optimizer": f"{_SPT} train_MAE.py: torch.optim.AdamW over utils.param_groups_weight_decay",
            "lr, weight_decay, head_weight_decay, min_lr, warm-up, epochs, drop_path (mae)":
                f"{_SPT} README.md, MAE command: --lr 5e-2 --weight_decay 1e-2 --wd_head 0.5 --min_lr 1e-8 "
                "--warmup_epochs 10 --epochs 100 --drop_path 0.0",
            "lr, weight_decay, head_weight_decay (mocov3, supervised)":
                f"{_SPT} README.md, MoCo/supervised command: --lr 1e-3 --weight_decay 1e-2 --wd_head 3.0",
            "batch_size": f"{_SPT} README.md --batch_size 32, which train_MAE.py:72 divides over the "
                          "2 GPUs: 32 images per step in all",
            "drop_last": f"{_SPT} train_MAE.py:82-87 (train.py:82-87, train_MoCo.py:83-88): the train DataLoader "
                         "drops the last partial batch; floor(N/32) = floor(ceil(N/2)/16) steps for every even N",
            "schedule": f"{_SPT} utils.py adjust_learning_rate: linear warm-up from 0, half-cycle cosine to min_lr, "
                        "per step; step_per_epoch = len(train_loader) (train_MAE.py:450)",
            "num_prompts": f"{_SPT} README.md: 20 for deep, 100 for shallow (the methods' defaults)",
            "normalisation": f"{_SPT} Dataset/FGVC.py:51, Dataset/VTAB.py:55: ImageNet mean/std for every backbone "
                             "(train.py, supervised in21k, included)",
            "transforms (fgvc)": f"{_SPT} Dataset/FGVC.py:47-59: RandomResizedCrop(224, bicubic)+flip / "
                                 "Resize(256, bicubic)+CenterCrop(224), tasks/fgvc.py's own pipeline",
            "transforms (vtab)": f"{_SPT} Dataset/VTAB.py:51-63 (all 19 tasks): Resize(224, bicubic) then "
                                 "CenterCrop(224), train and test alike",
            "head_init": f"{_SPT} train_MAE.py:273, train.py:250: trunc_normal_(std=.02); train_MoCo.py:260: std=.01",
            "init_images (mocov3)": f"{_SPT} train_MoCo.py:100 prompt_generator(..., sample_size=1): one image; "
                                    "train_MAE.py:99-103, train.py:99-103: len(train_data)",
            "prompt_images": f"{_SPT} train_MAE.py:101,109: prompt images come from the training dataset object, "
                             "through its training transform (random crop and flip on FGVC)",
            "shallow_init": f"{_SPT} train_MAE.py:211-222 (train.py:189-200, train_MoCo.py:192-203): the shallow "
                            "branch ignores --prompt_sample_type and samples patch tokens",
            "precision": f"{_SPT} no autocast or GradScaler in any .py: fp32",
        },
        departures=(
            "DistributedSampler's per-rank padding and order (2 ranks) are not emulated: one shuffled order of N",
            "prompt images' crops and flips are seeded from the run's generator; SPT draws from torch's unseeded "
            "global RNG",
            "k-means init exists only for MAE-deep in the reference; bench offers it on every backbone",
            "the micro suite keeps the harness's own pipeline (its committed study ran on it)",
        ),
    ),
    "the SPT reference's recipe (AdamW, lr 5e-2 on MAE / 1e-3 otherwise, separate head weight decay)",
)

# VPT's tune_fgvc.py and tune_vtab.py search base learning rates per 256 images and scale them by batch/256; at its
# batch of 128 every base value is halved. `--set batch_size` does not rescale: set lr with it.
_VPT_BATCH = 128
_VPT_BASE_LRS = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1]
_VPT_VTAB_BASE_LRS = [*_VPT_BASE_LRS, 0.05]
_VPT_WEIGHT_DECAYS = [0.01, 1e-3, 1e-4, 0.0]
_VPT_PIPELINE = dict(normalisation="imagenet", head_init="kaiming-fan-out", precision="fp32")
_VPT_PROTOCOL = {"fgvc": {**_VPT_PIPELINE, "transforms": "vpt-fgvc", "final_train": "train"}, "vtab": _VPT_PIPELINE}
# On MAE, VPT pools the mean through a fresh identity-affine LayerNorm, not the checkpoint's norm.
_VPT_PROTOCOL.update({f"{family}/mae": {**values, "pool_norm": "fresh"}
                      for family, values in list(_VPT_PROTOCOL.items())})
# VPT-deep's prompt dropout, on the families VPT ran (the micro suite keeps its committed runs' values).
_VPT_DEEP_DROPOUT = {family: {"prompt_dropout": 0.1} for family in ("fgvc", "vtab")}

RECIPES.register(
    "vpt-paper",
    Recipe(
        methods=("vpt-*", "spt-*"),
        default_for=("vpt-*",),
        values={"*": dict(optimizer="sgd", lr=0.1, min_lr=0.0, weight_decay=0.01, head_weight_decay=None,
                          batch_size=_VPT_BATCH, lr_step="epoch", drop_path=0.0)},
        search={
            "vtab": {"lr": [base * _VPT_BATCH / 256 for base in _VPT_VTAB_BASE_LRS], "weight_decay": _VPT_WEIGHT_DECAYS},
            "*": {"lr": [base * _VPT_BATCH / 256 for base in _VPT_BASE_LRS], "weight_decay": _VPT_WEIGHT_DECAYS},
        },
        protocol=_VPT_PROTOCOL,
        method_values={"vpt-deep": _VPT_DEEP_DROPOUT},
        final_seeds=(42, 44, 82, 100, 800),
        warmup_fraction=0.1,
        sources={
            "optimizer": f"{_VPT} configs/base-prompt.yaml: SGD, momentum 0.9; src/solver/optimizer.py decays every "
                         "learnable tensor but the head's bias",
            "batch_size, epochs, warm-up": f"{_VPT} configs/base-prompt.yaml: BATCH_SIZE 128, TOTAL_EPOCH 100, "
                                          "WARMUP_EPOCH 10, cosine",
            "lr_step": f"{_VPT} src/engine/trainer.py train_classifier: scheduler.step() once per epoch",
            "search (fgvc)": f"{_VPT} tune_fgvc.py:151-157 prompt_main: lr in {_VPT_BASE_LRS} scaled by batch/256 "
                             "(tune_vtab.py:100), wd in [0.01, 0.001, 0.0001, 0.0]",
            "search (vtab)": f"{_VPT} tune_vtab.py:245-251: the FGVC grid plus lr 0.05",
            "lr, weight_decay (fixed protocol)": f"{_VPT} configs/prompt/cub.yaml: BASE_LR 0.1, WEIGHT_DECAY 0.01",
            "drop_last": f"{_VPT} src/data/loader.py:53-58: drop_last only with NUM_GPUS > 1; "
                         "configs/base-prompt.yaml:1 NUM_GPUS 1: the last partial batch trains",
            "normalisation": f"{_VPT} src/data/transforms.py:8-10 (FGVC), src/data/datasets/tf_dataset.py:75-76 "
                             "(VTAB): ImageNet mean/std for every backbone",
            "transforms (fgvc)": f"{_VPT} src/data/transforms.py:20-40: Resize(256)+RandomCrop(224)+flip / "
                                 "Resize(256)+CenterCrop(224), torchvision's default bilinear",
            "head_init": f"{_VPT} src/models/mlp.py:52-57: kaiming_normal_(a=0, mode='fan_out'), bias "
                         "-log((1-0.01)/0.01); src/models/vit_models.py:159-165 (special_bias=True)",
            "final_seeds": f"{_VPT} tune_vtab.py:284: five final runs, seeds 42, 44, 82, 100, 800",
            "precision": f"{_VPT} no autocast in src/engine/*.py: fp32",
            "pool_norm (mae)": f"{_VPT} src/models/vit_backbones/vit_mae.py:21-25: global_pool deletes `norm` and adds "
                               "fc_norm = LayerNorm(768, eps=1e-6), absent from the checkpoint (strict=False load, "
                               "src/models/build_vit_backbone.py:56-60) and frozen (src/models/vit_models.py:319-322); "
                               "src/models/vit_prompt/vit_mae.py:122-124 pools the mean through it",
            "final_train (fgvc)": f"{_VPT} train.py:66-71: construct_trainval_loader only for vtab-*; FGVC's final "
                                  "runs train on train",
            "prompt_dropout (vpt-deep)": f"{_VPT} demo.ipynb:110-175: MODEL.PROMPT.DROPOUT 0.1 for VPT-deep; "
                                         "demo.ipynb:28: no dropout for VPT-shallow",
        },
        departures=(
            "VTAB: PIL bicubic squash of the NOAH/SSF JPEG dump, where VPT resizes TFDS images with "
            "tf.image.resize (bilinear, no antialias; src/data/datasets/tf_dataset.py:148-156)",
            "prompt length and batch per task come from an external release (README.md:140), not the repository",
            "the micro suite keeps the harness's own pipeline (its committed study ran on it)",
        ),
    ),
    "the VPT reference's recipe (SGD, lr x weight-decay grid on val with lr scaled by batch/256)",
)

_SSF = "dongzelian/SSF"
# SSF's per-task scripts, train_scripts/vit/<folder>/train_ssf.sh: bench task -> (folder, --lr on L6, --weight-decay on
# L4, --drop-path on L7). One value per task: the reference searched nothing it published.
_SSF_TASKS = {
    "caltech101": ("vtab/caltech101", 1e-3, 5e-2, 0.1),
    "cifar100": ("vtab/cifar_100", 5e-3, 5e-5, 0.0),
    "clevr-count": ("vtab/clevr_count", 2e-3, 5e-2, 0.1),
    "clevr-dist": ("vtab/clevr_dist", 5e-2, 5e-2, 0.1),
    "retinopathy": ("vtab/diabetic_retinopathy", 5e-3, 5e-5, 0.2),
    "dmlab": ("vtab/dmlab", 5e-3, 5e-5, 0.1),
    "dsprites-loc": ("vtab/dsprites_loc", 1e-2, 5e-5, 0.0),
    "dsprites-ori": ("vtab/dsprites_ori", 5e-3, 5e-5, 0.2),
    "dtd": ("vtab/dtd", 5e-3, 5e-5, 0.0),
    "eurosat": ("vtab/eurosat", 3e-3, 5e-2, 0.2),
    "flowers102": ("vtab/flowers102", 5e-3, 5e-5, 0.0),
    "kitti-dist": ("vtab/kitti", 1e-2, 5e-5, 0.0),
    "camelyon": ("vtab/patch_camelyon", 5e-3, 5e-5, 0.0),
    "pets": ("vtab/pets", 5e-3, 5e-5, 0.0),
    "resisc45": ("vtab/resisc45", 2e-3, 5e-5, 0.1),
    "smallnorb-azi": ("vtab/smallnorb_azi", 2e-2, 5e-5, 0.1),
    "smallnorb-ele": ("vtab/smallnorb_ele", 5e-3, 5e-2, 0.2),
    "sun397": ("vtab/sun397", 5e-3, 5e-5, 0.0),
    "svhn": ("vtab/svhn", 1e-2, 5e-5, 0.0),
    "cub": ("fgvc/cub_2011", 1e-2, 5e-2, 0.0),
    "nabirds": ("fgvc/nabirds", 2e-4, 5e-2, 0.1),
    "flowers": ("fgvc/oxford_flowers", 1e-2, 5e-2, 0.1),
    "cars": ("fgvc/stanford_cars", 2e-2, 5e-2, 0.0),
    "dogs": ("fgvc/stanford_dogs", 2.5e-4, 5e-2, 0.0),
}
# Elsewhere (micro, and any task SSF did not run): the modal VTAB value, 5e-3 with wd 5e-5 on 10 of 19 tasks.
_SSF_COMMON = dict(optimizer="adamw", lr=5e-3, min_lr=1e-8, weight_decay=5e-5, head_weight_decay=None,
                   batch_size=64, lr_step="epoch", drop_path=0.0, warmup_lr=1e-7, warmup_prefix=False)
# SSF's scripts train 10 epochs at min_lr after their 100 (timm's --cooldown-epochs default); on the tasks they ran.
_SSF_SCRIPT = {**_SSF_COMMON, "cooldown_epochs": 10}


def _bracket(lr: float) -> list[float]:
    """The reference's lr and a factor of 2 either side: the `tune` grid of a recipe whose reference fixed lr."""
    return [2 * lr, lr, lr / 2]


RECIPES.register(
    "ssf-paper",
    Recipe(
        methods=("ssf",),
        values={"*": _SSF_COMMON, **{task: {**_SSF_SCRIPT, "lr": lr, "weight_decay": wd, "drop_path": dp}
                                     for task, (_, lr, wd, dp) in _SSF_TASKS.items()}},
        search={"*": {"lr": _bracket(_SSF_COMMON["lr"])},
                **{task: {"lr": _bracket(lr)} for task, (_, lr, _, _) in _SSF_TASKS.items()}},
        protocol={"fgvc": {"drop_last": True}, "vtab": {"drop_last": True}},
        final_seeds=(42,),
        warmup_fraction=0.1,
        sources={
            "lr, weight_decay, drop_path (per task)": f"{_SSF} train_scripts/vit/<folder>/train_ssf.sh: --weight-decay "
                "L4, --lr L6, --drop-path L7; folders: " + ", ".join(f"{task}={folder}"
                                                                    for task, (folder, *_) in _SSF_TASKS.items()),
            "optimizer, min_lr, warm-up": f"{_SSF} train_ssf.sh L4 --opt adamw, L5 --warmup-lr 1e-7 --warmup-epochs "
                                          "10, L6 --min-lr 1e-8, L3 --epochs 100",
            "warmup_prefix, cooldown_epochs": f"{_SSF} train.py:522 timm 0.6.5 create_scheduler: "
                "CosineLRScheduler(t_initial=epochs, warmup_prefix=False), the warm-up inside the cosine "
                "(scheduler/cosine_lr.py:72-77); train.py:202 --cooldown-epochs 10: 110 epochs trained, the last 10 "
                "at min_lr (log/cifar100.csv has 110 rows)",
            "batch_size": f"{_SSF} train_ssf.sh L1 --nproc_per_node=2, L3 --batch-size 32 per process "
                          "(data/loader.py:235 DistributedSampler): 64 images per step",
            "drop_last": f"{_SSF} data/loader.py:257 drop_last=is_training",
            "lr_step": f"{_SSF} train.py:709 lr_scheduler.step(epoch + 1, ...): once per epoch",
            "weight decay reaches the head only": f"{_SSF} optim_factory.py:39-58 skips 1-D tensors (γ, β), as "
                                                  "bench's parameter groups do",
            "search": "none in the reference (one value per task); the tune grid brackets each task's lr by a "
                      "factor of 2 (x2, x1, x0.5)",
            "final_seeds": f"{_SSF} train.py:294 --seed default 42, one run",
            "backbone": f"{_SSF} train_ssf.sh L2 --model vit_base_patch16_224_in21k, its AugReg weights "
                        "(models/vision_transformer.py:121-122): run with --backbone sup21k-augreg-vit-b16",
            "normalisation": f"{_SSF} models/vision_transformer.py:52 the weights' own 0.5 mean/std "
                             "(normalisation=weights)",
            "transforms (vtab)": f"{_SSF} train_ssf.sh L2 --no-aug --direct-resize: the 224x224 bicubic squash of "
                                 "the VTAB family's own pipeline",
            "precision": f"{_SSF} train_ssf.sh L10 --amp: train.py:384-393, 480-481 fp16 autocast with NativeScaler",
        },
        departures=(
            "backbone: the recipe does not choose it; SSF's numbers are AugReg in21k: pass --backbone "
            "sup21k-augreg-vit-b16",
            "cool-down: 10 epochs whatever --epochs says (SSF's 100 + 10); --set cooldown_epochs=0 drops them",
            "precision: fp16 autocast with loss scaling in the reference; bench trains bf16 autocast on CUDA, "
            "fp32 on the CPU (precision=auto)",
            "FGVC: no model EMA (train_ssf.sh L8 --model-ema-decay 0.9998, 0.999 on Flowers), no mixup 0.8 / "
            "cutmix 1.0 / label smoothing 0.1 / random erasing 0.25 (timm defaults the FGVC scripts keep), "
            "train crop RandomResizedCrop with bicubic, not random, interpolation, eval Resize(256), not 248",
            "selection: SSF reports the best test epoch (train.py:718-724); bench tunes on val and reports the "
            "last epoch",
            "the micro suite keeps the harness's own pipeline and SSF's modal values (lr 5e-3, wd 5e-5)",
        ),
    ),
    "the SSF reference's per-task scripts (AdamW, lr/wd/drop-path per task, batch 64, 10% warm-up per epoch)",
)

_NOAH = "ZhangYuanhan-AI/NOAH"
_NOAH_LR = 1e-3

RECIPES.register(
    "noah",
    Recipe(
        methods=("lora",),
        values={"*": dict(optimizer="adamw", lr=_NOAH_LR, min_lr=1e-5, weight_decay=1e-4, head_weight_decay=None,
                          batch_size=64, lr_step="epoch", drop_path=0.1, warmup_lr=1e-6, warmup_prefix=False,
                          rank=8, alpha=8.0, targets="qkv", dropout=0.1, init="noah")},
        search={"*": {"lr": _bracket(_NOAH_LR)}},
        protocol={"vtab": dict(normalisation="imagenet", drop_last=True, precision="fp32")},
        final_seeds=(0,),
        warmup_fraction=0.1,
        sources={
            "lr, weight_decay, batch_size, epochs": f"{_NOAH} configs/LoRA/VTAB/slurm_train_lora_vtab.sh:12 "
                "WEIGHT_DECAY=0.0001, :22 LR 0.001, :36 --batch-size=64 --epochs=100",
            "optimizer": f"{_NOAH} supernet_train_prompt.py:74 --opt adamw, :365 timm create_optimizer (1-D "
                         "tensors undecayed)",
            "min_lr, warm-up, warmup_lr": f"{_NOAH} supernet_train_prompt.py:98 --warmup-lr 1e-6, :100 --min-lr "
                                          "1e-5, :107 --warmup-epochs 10",
            "warmup_prefix": f"{_NOAH} supernet_train_prompt.py:367 timm 0.5.4 create_scheduler: "
                             "CosineLRScheduler(warmup_prefix=False), the warm-up inside the cosine",
            "cooldown_epochs": f"{_NOAH} supernet_train_prompt.py:400 trains range(start_epoch, epochs): the "
                               "scheduler's 10 cool-down epochs never run",
            "lr_step": f"{_NOAH} supernet_train_prompt.py:414 lr_scheduler.step(epoch) once per epoch",
            "drop_path": f"{_NOAH} supernet_train_prompt.py:59 --drop-path 0.1 (the scripts keep the default)",
            "rank, targets, alpha": f"{_NOAH} experiments/LoRA/ViT-B_prompt_lora_8.yaml: LORA_DIM 8 in all 12 "
                                    "blocks; model/supernet_vision_transformer_timm.py:277-281: B·A added to the "
                                    "fused qkv, unscaled (alpha = rank)",
            "dropout": f"{_NOAH} supernet_train_prompt.py:207 --drop_rate_LoRA 0.1 on A's input (L242, L278)",
            "init": f"{_NOAH} model/supernet_vision_transformer_timm.py:225-228 kaiming A (fan-in 768, peft's "
                    "bound) and zero B, both redrawn by init_weights (L462, L531, L686): trunc_normal_(std=.02)",
            "drop_last": f"{_NOAH} supernet_train_prompt.py:275-280 drop_last=True",
            "normalisation, transforms (vtab)": f"{_NOAH} lib/datasets.py:227-241 --direct_resize: "
                                                "Resize((224, 224), bicubic), ImageNet mean/std",
            "head_init": f"{_NOAH} model/supernet_vision_transformer_timm.py:551-555 reset_classifier: "
                         "trunc_normal_(std=.02), zero bias",
            "precision": f"{_NOAH} supernet_train_prompt.py:188-190 --amp off by default; the scripts do not pass it",
            "final_seeds": f"{_NOAH} supernet_train_prompt.py:170 --seed 0, one run",
            "backbone": f"{_NOAH} README.md:67 the original in21k ViT-B_16.npz: --backbone sup21k-vit-b16",
            "search": "none in the reference (slurm_train_lora_vtab.sh:22 one LR); the tune grid brackets it by a "
                      "factor of 2",
        },
        departures=(
            "schedule: NOAH's lr_scheduler.step(epoch) after epoch e (supernet_train_prompt.py:414) sets epoch "
            "e+1 to the value of epoch e, so it trains one epoch behind timm's schedule; bench does not lag",
            "NOAH's Adapter baseline is not covered: bench has no sequential (Houlsby-style, QuickGELU) adapter",
            "selection: NOAH prints the max test accuracy over epochs (supernet_train_prompt.py:428-431); bench "
            "tunes on val and reports the last epoch",
            "NOAH ran VTAB-1k only: FGVC and the micro suite keep the harness's pipeline",
        ),
    ),
    "NOAH's LoRA baseline for VTAB-1k (AdamW lr 1e-3, wd 1e-4, batch 64, drop-path 0.1, A and B ~ N(0, 0.02²))",
)

_AF = "ShoufaChen/AdaptFormer"
# AdaptFormer scales a base lr by the effective batch (main_image.py:253, lr = blr x batch / 256): 0.4 at its
# 8 x 128 images. A batch of 1024 would not fill one step of VTAB-1k's 800 training images, so the recipe trains
# the per-GPU 128 at the lr the same rule gives.
_AF_BATCH = 128
_AF_LR = 0.1 * _AF_BATCH / 256
_AF_PIPELINE = dict(head_init="bn-trunc-normal-0.01", drop_last=True)

RECIPES.register(
    "adaptformer-paper",
    Recipe(
        methods=("adaptformer",),
        values={"*": dict(optimizer="sgd", lr=_AF_LR, min_lr=0.0, weight_decay=0.0, head_weight_decay=None,
                          batch_size=_AF_BATCH, lr_step="batch", drop_path=0.0, bottleneck=64, scale=0.1,
                          adapter_input="residual", dropout=0.1)},
        search={"*": {"lr": _bracket(_AF_LR)}},
        protocol={"fgvc": _AF_PIPELINE, "vtab": _AF_PIPELINE},
        final_seeds=(0,),
        warmup_fraction=0.2,
        sources={
            "optimizer, weight_decay": f"{_AF} main_image.py:266 SGD momentum 0.9; :47 --weight_decay 0",
            "lr, batch_size": f"{_AF} main_image.py:253 lr = blr x eff_batch / 256; README.md image command "
                              "--blr 0.1, --batch_size 128 on 8 GPUs (0.4 at 1024); here 128 and 0.05",
            "epochs, warm-up, min_lr": f"{_AF} main_image.py:38 --epochs 100, :58 --warmup_epochs 20, :55 --min_lr 0",
            "lr_step": f"{_AF} engine_finetune.py:50 adjust_learning_rate per iteration; util/lr_sched.py:9-15 "
                       "linear warm-up from 0, half cosine",
            "drop_path": f"{_AF} README.md image command --drop_path 0.0",
            "bottleneck, scale": f"{_AF} main_image.py:184-195 tuning_config: ffn_num 64, scalar 0.1, 'lora' init",
            "adapter_input": f"{_AF} models/custom_modules.py:77-79 the adapter reads x before norm2",
            "dropout": f"{_AF} models/custom_modules.py:70 Adapter(dropout=0.1); models/adapter.py:57 after ReLU",
            "head_init": f"{_AF} main_image.py:227 trunc_normal_(head.weight, std=0.01), :231 "
                         "BatchNorm1d(affine=False, eps=1e-6) before it",
            "drop_last": f"{_AF} main_image.py:172 drop_last=True",
            "final_seeds": f"{_AF} main_image.py:81 --seed 0",
            "search": "none in the reference; the tune grid brackets lr by a factor of 2",
        },
        departures=(
            "no VTAB-1k or FGVC protocol in the reference (full CIFAR-100, SVHN, Food-101, Flowers): the recipe "
            "applies its code's values to them, with each family's own image pipeline",
            "batch 128 at lr 0.05 (the code's blr x batch / 256 rule), not 1024 at 0.4",
            "pooling follows the backbone (MAE: mean after the class token, then norm); the image command passes "
            "--cls_token (norm, then the class token)",
            "precision: fp16 autocast (engine_finetune.py:58) in the reference; bench trains bf16 autocast on CUDA, "
            "fp32 on the CPU (precision=auto)",
            "the adapter is added to the MLP's output before drop-path, the reference after it; equal at the "
            "recipe's drop-path 0",
            "selection: the reference reports max test accuracy over epochs (main_image.py:301); bench tunes on "
            "val and reports the last epoch",
            "the micro suite keeps the harness's own pipeline",
        ),
    ),
    "the AdaptFormer reference's code (SGD, lr blr x batch / 256, no wd, 20% warm-up, BN head, adapter on the "
    "residual with dropout 0.1)",
)


# `shared`: one protocol for every method, so that what differs between two rows is the methods. Each method's lr is
# its own reference value under AdamW, from the table below (a method not in it keeps its config default), and every
# method searches the same number of points around it; everything else is the same for all.
_SHARED_SPT_LR = {"mae": {"lr": _SPT_MAE_LR}, "*": {"lr": _SPT_OTHER_LR}}
_SHARED_REFERENCE_LR: dict[str, tuple[dict[str, dict[str, float]], str]] = {
    "spt-*": (_SHARED_SPT_LR, f"{_SPT} README.md: AdamW lr 5e-2 on MAE, 1e-3 on MoCo-v3 and supervised"),
    # VPT's own rates are SGD's (tune_fgvc.py) and mean nothing to AdamW; its prompts are the parameters SPT tunes.
    "vpt-*": (_SHARED_SPT_LR, f"VPT's lrs are SGD's ({_VPT} tune_fgvc.py:151-157); its prompts are the parameters "
                              f"SPT tunes, so it takes SPT's AdamW lr ({_SPT} README.md)"),
    "ssf": ({"*": {"lr": 5e-3}}, "dongzelian/SSF train_scripts/vit/vtab/*/train_ssf.sh:6: AdamW, lr 5e-3 on 10 of "
                                 "the 19 VTAB tasks, the modal value (docs/reference-audit.md section 14)"),
    "lora": ({"*": {"lr": 1e-3}}, "ZhangYuanhan-AI/NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh:22: AdamW, lr 1e-3"),
}
# Five learning rates a factor of 2 apart around the centre (powers of 2 keep lr x factor exact in floating point),
# times the same two weight decays for every method: 10 points each.
_SHARED_LR_FACTORS = (4.0, 2.0, 1.0, 0.5, 0.25)
_SHARED_WEIGHT_DECAYS = [1e-2, 1e-4]
# The harness's own pipeline, spelt out so that it is pinned for this protocol. Each value is the one most
# references share or the one the weights ask for: the weights' own normalisation, the family's image pipelines
# (VTAB's squash is VPT's, NOAH's and SSF's; FGVC's is SPT's), SPT's, SSF's and NOAH's head init, the last batch kept
# (VPT), mean-pooled backbones through their checkpoint's norm (SPT), the final stage on train+val. Precision `auto`
# (bf16 autocast on CUDA, fp32 on the CPU): the same arithmetic for every method, so it favours none, and it keeps a
# grid of 10 points per method and task affordable on a GPU; the paper recipes pin fp32 where their code ran it.
_SHARED_PIPELINE = dict(normalisation="weights", transforms="task", head_init="trunc-normal-0.02", drop_last=False,
                        precision="auto", prompt_images="eval", shallow_init="as_named", pool_norm="checkpoint",
                        final_train="train+val")

RECIPES.register(
    "shared",
    Recipe(
        methods=("*",),
        # epochs 0: the task's, for every method (the linear heads' config trains 100 whatever the task).
        values={"*": dict(epochs=0, optimizer="adamw", min_lr=0.0, weight_decay=1e-4, head_weight_decay=None,
                          batch_size=32, lr_step="batch", drop_path=0.0)},
        method_values={glob: lrs for glob, (lrs, _) in _SHARED_REFERENCE_LR.items()},
        search={"*": {"weight_decay": _SHARED_WEIGHT_DECAYS}},
        lr_factors=_SHARED_LR_FACTORS,
        protocol={"*": _SHARED_PIPELINE},
        final_seeds=(42, 44, 82, 100, 800),
        warmup_fraction=0.1,
        sources={
            **{f"lr ({glob})": source for glob, (_, source) in _SHARED_REFERENCE_LR.items()},
            "lr (every other method)": "the method's config default (bench list methods; docs/methods.md)",
            "optimizer, schedule": "AdamW with a linear warm-up over 10% of the epochs and a cosine to 0, stepped per "
                                   f"batch: SPT's ({_SPT} utils.py adjust_learning_rate), SSF's and NOAH's optimiser",
            "weight_decay, batch_size": "1e-4 (NOAH's) in fixed runs, searched over {1e-2 (SPT's), 1e-4}; batch 32",
            "search": "5 lr (the method's reference lr x 4, 2, 1, 1/2, 1/4) x 2 weight decays: 10 points per "
                      "method and task",
            "final_seeds": f"VPT's five final seeds ({_VPT} tune_vtab.py:284)",
            "pipeline": "the harness's own, pinned, the same for every method (docs/recipes.md: why each value)",
        },
        departures=(
            "a comparison protocol, not a paper's: each method leaves its own paper's optimiser, batch, schedule, "
            "pipeline and grid (see the paper recipes for those)",
            "only lr and weight decay are searched; a method's other hyper-parameters (LoRA rank, adapter "
            "bottleneck, prompt count) keep their config defaults",
        ),
    ),
    "a protocol for comparing methods: one pipeline and optimiser for all, 10 grid points around each method's lr",
)


def recipe_for(method: str, requested: str | None = DEFAULT) -> str | None:
    """The recipe `method` runs under: the requested one where it applies, else the method's default recipe;
    `none` means no recipe."""
    requested = requested or DEFAULT
    if requested == NONE:
        return None
    if requested != DEFAULT:
        if RECIPES.get(requested).applies_to(method):
            return requested
    defaults = [name for name in RECIPES.names()
                if any(fnmatch.fnmatchcase(method, p) for p in RECIPES.get(name).default_for)]
    return defaults[0] if defaults else None


def check_recipe(requested: str, methods: list[str]) -> None:
    """Fail early on an unknown recipe, or one that applies to none of the selected methods."""
    if requested in (DEFAULT, NONE):
        return
    recipe = RECIPES.get(requested)
    if not any(recipe.applies_to(m) for m in methods):
        raise BenchError(
            f"recipe {requested!r} applies to {', '.join(recipe.methods)}, none of the selected methods "
            f"({', '.join(methods)}); choose another recipe or add such a method"
        )


def search_grid(method: str, backbone: str, recipe: str | None, task: str) -> dict[str, list[Any]]:
    """The grid the `tune` protocol searches for `method` on `backbone` and `task`: the recipe's, else the
    method's own."""
    if recipe is None:
        return dict(METHODS.get(method).search)
    chosen = RECIPES.get(recipe)
    search = chosen.search_for(backbone_entry(backbone).objective, task_family(task), task)
    if not chosen.lr_factors:
        return search
    centre = resolve_hparams(method, task, backbone, recipe, {})["lr"]
    return {"lr": [centre * factor for factor in chosen.lr_factors], **search}


def final_seeds(recipe: str | None, requested: list[int] | None) -> list[int]:
    """The seeds a final stage of runs resolved under `recipe` trains: `--seeds` when given, else the recipe's own
    (VPT's five), else `DEFAULT_SEEDS`."""
    if requested is not None:
        return list(requested)
    return list((RECIPES.get(recipe).final_seeds if recipe is not None else ()) or DEFAULT_SEEDS)


def resolve_hparams(method: str, task: str, backbone: str, recipe: str | None,
                    overrides: dict[str, Any]) -> dict[str, Any]:
    """The method's full, validated hyper-parameters for `task` on `backbone` under `recipe` (a name or None),
    with `overrides` on top (protocol values among them are ignored here); epochs 0 becomes the task's default."""
    values: dict[str, Any] = {}
    warmup_fraction = None
    if recipe is not None:
        chosen = RECIPES.get(recipe)
        values = chosen.values_for(backbone_entry(backbone).objective, task_family(task), method, task)
        warmup_fraction = chosen.warmup_fraction
    overrides = {k: v for k, v in overrides.items() if k not in protocol.FIELDS}
    config_cls = METHODS.get(method).config_cls
    values = {k: v for k, v in values.items() if k in config_cls.__dataclass_fields__}
    hparams = config_cls.from_overrides({**values, **overrides}).to_dict()
    if hparams["epochs"] == 0:
        hparams["epochs"] = TASKS.get(task).epochs
    if warmup_fraction is not None and "warmup_epochs" not in overrides:
        hparams["warmup_epochs"] = warmup_fraction * hparams["epochs"]
    return hparams


def resolve_protocol(task: str, backbone: str, recipe: str | None, overrides: dict[str, Any]) -> Protocol:
    """The pipeline for `task` on `backbone` under `recipe`, with the protocol values of `overrides` on top."""
    entry = backbone_entry(backbone)
    values = RECIPES.get(recipe).protocol_for(entry.objective, task_family(task), task) if recipe is not None else {}
    pipeline = Protocol.from_values({**values, **{k: v for k, v in overrides.items() if k in protocol.FIELDS}})
    if pipeline.pool_norm == "fresh" and entry.pooling != "avg":
        raise BenchError(f"pool_norm=fresh replaces the norm of a mean-pooled backbone (MAE); {backbone} pools its "
                         "class token through its own norm; drop --set pool_norm or pick a mean-pooled backbone")
    return pipeline


def make_spec(method: str, task: str, backbone: str, seed: int, overrides: dict[str, Any] | None = None,
              recipe: str | None = DEFAULT, weights: str | None = None, stage: str = "fixed") -> RunSpec:
    """A run spec with every hyper-parameter and pipeline value resolved, recording the recipe it was resolved
    under; the spec keeps the pipeline values that differ from the harness's defaults."""
    name = recipe_for(method, recipe)
    hparams = resolve_hparams(method, task, backbone, name, dict(overrides or {}))
    pipeline = resolve_protocol(task, backbone, name, dict(overrides or {}))
    return RunSpec(method, task, backbone, seed, hparams, weights, stage, name, pipeline.changes())


def describe(name: str) -> dict[str, Any]:
    """A recipe as a record stores it: its values per objective, its search grids and its sources. Its name lists
    are lists, as JSON reads them back, so that a run's record equals its stored copy."""
    recipe = dataclasses.asdict(RECIPES.get(name))
    return {"name": name, **recipe, **{key: list(recipe[key]) for key in ("methods", "default_for", "lr_factors",
                                                                        "final_seeds", "departures")}}
