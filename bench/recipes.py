"""Recipes: the reference code's hyper-parameters, by name, resolved per backbone.

A recipe is what a paper's code actually ran: optimiser, learning rate and weight decays per pre-training objective
(the SPT reference uses lr 5e-2 on MAE and 1e-3 on MoCo-v3 and supervised backbones), schedule, batch, and the grid
the `tune` protocol searches on val. Each value names the file it comes from, so a reader can check it.

Resolution, lowest to highest priority: the method's config defaults, the recipe's values for the backbone's
objective (`*` covers every objective the recipe does not list), then the user's `--set`. A method that a recipe is
the default for (`default_for`) runs under it unless `--recipe` names another one or `none` (the config defaults).
Epochs stay the task's (100 on FGVC and VTAB-1k, as both references train); a recipe's warm-up is a fraction of them
(10 of 100 epochs in both references), so a shorter task keeps the reference's shape of schedule.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from bench import BenchError
from bench.backbone import backbone_entry
from bench.config import RunSpec
from bench.data import TASKS
from bench.method import METHODS
from bench.registry import Registry

# `--recipe` values that are not registry names.
DEFAULT = "default"  # each method's own default recipe, if it has one
NONE = "none"  # the methods' config defaults, no recipe


@dataclass(frozen=True)
class Recipe:
    """A named set of reference hyper-parameters.

    Attributes:
        methods: method names or globs the recipe applies to.
        default_for: methods (globs) that run under this recipe when no `--recipe` is given.
        values: objective (`mae`, `mocov3`, `supervised`, `none`, or `*` for the rest) -> hyper-parameters.
        search: objective -> the grid the `tune` protocol searches on val (hyper-parameter -> values).
        warmup_fraction: warm-up length as a fraction of the run's epochs; None leaves `warmup_epochs` as resolved.
        sources: hyper-parameter (or topic) -> the reference file and line it comes from.
    """

    methods: tuple[str, ...]
    values: dict[str, dict[str, Any]]
    search: dict[str, dict[str, list[Any]]]
    default_for: tuple[str, ...] = ()
    warmup_fraction: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def applies_to(self, method: str) -> bool:
        return any(fnmatch.fnmatchcase(method, pattern) for pattern in self.methods)

    def values_for(self, objective: str) -> dict[str, Any]:
        return dict(self.values.get(objective, self.values.get("*", {})))

    def search_for(self, objective: str) -> dict[str, list[Any]]:
        return dict(self.search.get(objective, self.search.get("*", {})))


RECIPES: Registry[Recipe] = Registry("recipe")

_SPT = "SinAxCosB/Self-Prompt-Tuning"
_VPT = "KMnP/vpt"
_SPT_MAE_LR = 5e-2
_SPT_OTHER_LR = 1e-3

RECIPES.register(
    "spt-paper",
    Recipe(
        methods=("spt-*", "vpt-*"),
        default_for=("spt-*",),
        values={
            "mae": dict(optimizer="adamw", lr=_SPT_MAE_LR, min_lr=1e-8, weight_decay=1e-2, head_weight_decay=0.5,
                        batch_size=32, lr_step="batch", drop_path=0.0),
            "*": dict(optimizer="adamw", lr=_SPT_OTHER_LR, min_lr=1e-8, weight_decay=1e-2, head_weight_decay=3.0,
                      batch_size=32, lr_step="batch", drop_path=0.0),
        },
        # The reference publishes one learning rate per objective; the grid brackets it by a factor of 2.
        search={
            "mae": {"lr": [2 * _SPT_MAE_LR, _SPT_MAE_LR, _SPT_MAE_LR / 2]},
            "*": {"lr": [2 * _SPT_OTHER_LR, _SPT_OTHER_LR, _SPT_OTHER_LR / 2]},
        },
        warmup_fraction=0.1,
        sources={
            "optimizer": f"{_SPT} train_MAE.py: torch.optim.AdamW over utils.param_groups_weight_decay",
            "lr, weight_decay, head_weight_decay, min_lr, warm-up, epochs, drop_path (mae)":
                f"{_SPT} README.md, MAE command: --lr 5e-2 --weight_decay 1e-2 --wd_head 0.5 --min_lr 1e-8 "
                "--warmup_epochs 10 --epochs 100 --drop_path 0.0",
            "lr, weight_decay, head_weight_decay (mocov3, supervised)":
                f"{_SPT} README.md, MoCo/supervised command: --lr 1e-3 --weight_decay 1e-2 --wd_head 3.0",
            "batch_size": f"{_SPT} README.md --batch_size 32, which train_MAE.py create_dataset divides over the "
                          "2 GPUs: 32 images per step in all",
            "schedule": f"{_SPT} utils.py adjust_learning_rate: linear warm-up from 0, half-cycle cosine to min_lr, "
                        "per step",
            "num_prompts": f"{_SPT} README.md: 20 for deep, 100 for shallow (the methods' defaults)",
        },
    ),
    "the SPT reference's recipe (AdamW, lr 5e-2 on MAE / 1e-3 otherwise, separate head weight decay)",
)

# VPT's tune_fgvc.py searches base learning rates per 256 images and scales them by batch/256; at its batch of
# 128 every base value is halved. `--set batch_size` does not rescale: set lr with it.
_VPT_BATCH = 128
_VPT_BASE_LRS = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1]

RECIPES.register(
    "vpt-paper",
    Recipe(
        methods=("vpt-*", "spt-*"),
        default_for=("vpt-*",),
        values={"*": dict(optimizer="sgd", lr=0.1, min_lr=0.0, weight_decay=0.01, head_weight_decay=None,
                          batch_size=_VPT_BATCH, lr_step="epoch", drop_path=0.0)},
        search={"*": {"lr": [base * _VPT_BATCH / 256 for base in _VPT_BASE_LRS],
                      "weight_decay": [0.01, 1e-3, 1e-4, 0.0]}},
        warmup_fraction=0.1,
        sources={
            "optimizer": f"{_VPT} configs/base-prompt.yaml: SGD, momentum 0.9; src/solver/optimizer.py decays every "
                         "learnable tensor but the head's bias",
            "batch_size, epochs, warm-up": f"{_VPT} configs/base-prompt.yaml: BATCH_SIZE 128, TOTAL_EPOCH 100, "
                                          "WARMUP_EPOCH 10, cosine",
            "lr_step": f"{_VPT} src/engine/trainer.py train_classifier: scheduler.step() once per epoch",
            "search": f"{_VPT} tune_fgvc.py prompt_main: lr in {_VPT_BASE_LRS} scaled by batch/256, "
                      "wd in [0.01, 0.001, 0.0001, 0.0]",
            "lr, weight_decay (fixed protocol)": f"{_VPT} configs/prompt/cub.yaml: BASE_LR 0.1, WEIGHT_DECAY 0.01",
        },
    ),
    "the VPT reference's recipe (SGD, lr x weight-decay grid on val with lr scaled by batch/256)",
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


def search_grid(method: str, backbone: str, recipe: str | None) -> dict[str, list[Any]]:
    """The grid the `tune` protocol searches for `method` on `backbone`: the recipe's, else the method's own."""
    if recipe is None:
        return dict(METHODS.get(method).search)
    return RECIPES.get(recipe).search_for(backbone_entry(backbone).objective)


def resolve_hparams(method: str, task: str, backbone: str, recipe: str | None,
                    overrides: dict[str, Any]) -> dict[str, Any]:
    """The method's full, validated hyper-parameters for `task` on `backbone` under `recipe` (a name or None),
    with `overrides` on top; epochs 0 becomes the task's default."""
    values: dict[str, Any] = {}
    warmup_fraction = None
    if recipe is not None:
        chosen = RECIPES.get(recipe)
        values = chosen.values_for(backbone_entry(backbone).objective)
        warmup_fraction = chosen.warmup_fraction
    config_cls = METHODS.get(method).config_cls
    values = {k: v for k, v in values.items() if k in config_cls.__dataclass_fields__}
    hparams = config_cls.from_overrides({**values, **overrides}).to_dict()
    if hparams["epochs"] == 0:
        hparams["epochs"] = TASKS.get(task).epochs
    if warmup_fraction is not None and "warmup_epochs" not in overrides:
        hparams["warmup_epochs"] = warmup_fraction * hparams["epochs"]
    return hparams


def make_spec(method: str, task: str, backbone: str, seed: int, overrides: dict[str, Any] | None = None,
              recipe: str | None = DEFAULT, weights: str | None = None, stage: str = "fixed") -> RunSpec:
    """A run spec with every hyper-parameter resolved, recording the recipe it was resolved under."""
    name = recipe_for(method, recipe)
    hparams = resolve_hparams(method, task, backbone, name, dict(overrides or {}))
    return RunSpec(method, task, backbone, seed, hparams, weights, stage, name)


def describe(name: str) -> dict[str, Any]:
    """A recipe as a record stores it: its values per objective, its search grids and its sources. Its name lists
    are lists, as JSON reads them back, so that a run's record equals its stored copy."""
    recipe = dataclasses.asdict(RECIPES.get(name))
    return {"name": name, **recipe, "methods": list(recipe["methods"]), "default_for": list(recipe["default_for"])}
