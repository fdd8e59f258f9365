"""Recipes resolve to the reference code's values per backbone objective; records carry them; the optimiser and the
schedule they drive behave as the references' code does; each backbone normalises as its weights were trained."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bench import BenchError
from bench.backbone import BACKBONES, backbone_entry, load_backbone
from bench.config import TrainConfig
from bench.engine import parameter_groups, run, warmup_cosine
from bench.recipes import RECIPES, make_spec, recipe_for, resolve_hparams, search_grid
from bench.scheduler import Grid

# (recipe, backbone) -> values the reference code uses (README commands / configs; see bench/recipes.py sources).
REFERENCE = {
    ("spt-paper", "mae-vit-b16"): dict(optimizer="adamw", lr=5e-2, min_lr=1e-8, weight_decay=1e-2,
                                       head_weight_decay=0.5, batch_size=32, drop_path=0.0),
    ("spt-paper", "mocov3-vit-b16"): dict(optimizer="adamw", lr=1e-3, min_lr=1e-8, weight_decay=1e-2,
                                          head_weight_decay=3.0, batch_size=32, drop_path=0.0),
    ("spt-paper", "sup21k-vit-b16"): dict(optimizer="adamw", lr=1e-3, min_lr=1e-8, weight_decay=1e-2,
                                          head_weight_decay=3.0, batch_size=32, drop_path=0.0),
    ("spt-paper", "micro-mae"): dict(optimizer="adamw", lr=5e-2, head_weight_decay=0.5),
    ("vpt-paper", "mae-vit-b16"): dict(optimizer="sgd", lr=0.1, min_lr=0.0, weight_decay=0.01,
                                       head_weight_decay=None, batch_size=128),
    ("vpt-paper", "sup21k-vit-b16"): dict(optimizer="sgd", lr=0.1, weight_decay=0.01, batch_size=128),
}


@pytest.mark.parametrize("recipe,backbone", list(REFERENCE))
@pytest.mark.parametrize("method", ["spt-deep", "vpt-shallow"])
def test_recipe_resolves_to_the_reference_values(recipe, backbone, method):
    hparams = resolve_hparams(method, "cub", backbone, recipe, {})
    for key, value in REFERENCE[(recipe, backbone)].items():
        assert hparams[key] == value, f"{recipe} on {backbone}: {key}"
    # FGVC trains 100 epochs with 10 of warm-up in both references.
    assert (hparams["epochs"], hparams["warmup_epochs"]) == (100, 10)


def test_prompt_counts_are_the_references_20_deep_and_100_shallow():
    assert resolve_hparams("spt-deep", "cub", "mae-vit-b16", "spt-paper", {})["num_prompts"] == 20
    assert resolve_hparams("spt-shallow", "cub", "mae-vit-b16", "spt-paper", {})["num_prompts"] == 100
    assert resolve_hparams("vpt-deep", "cub", "mae-vit-b16", None, {})["num_prompts"] == 20


def test_vpt_paper_searches_vpts_grid_scaled_by_batch_over_256():
    # tune_fgvc.py:151-157; tune_vtab.py:245-251 adds 0.05 (both scaled by batch/256, tune_vtab.py:100).
    fgvc_bases = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1]
    for task, bases in (("cub", fgvc_bases), ("cifar100", [*fgvc_bases, 0.05]), ("digits", fgvc_bases)):
        grid = search_grid("vpt-deep", "sup21k-vit-b16", "vpt-paper", task)
        assert grid["lr"] == [base * 128 / 256 for base in bases], task
        assert grid["weight_decay"] == [0.01, 1e-3, 1e-4, 0.0]
    assert len(Grid(["vpt-deep"], ["cub", "cifar100"], ["sup21k-vit-b16"], [0]).tuning_specs()) == 36 + 40


@pytest.mark.parametrize("backbone,reference_lr", [("mae-vit-b16", 5e-2), ("mocov3-vit-b16", 1e-3),
                                                  ("sup21k-vit-b16", 1e-3), ("micro-mae", 5e-2)])
@pytest.mark.parametrize("method", ["spt-deep", "spt-shallow"])
def test_default_search_grid_contains_the_reference_learning_rate(method, backbone, reference_lr):
    assert reference_lr in search_grid(method, backbone, recipe_for(method), "cub")["lr"]


def test_default_recipes_and_overrides():
    assert recipe_for("spt-deep") == "spt-paper" and recipe_for("vpt-shallow") == "vpt-paper"
    assert recipe_for("vpt-deep", "spt-paper") == "spt-paper"
    assert recipe_for("linear") is None and recipe_for("linear", "spt-paper") is None
    assert recipe_for("spt-deep", "none") is None
    # --set wins over the recipe.
    assert resolve_hparams("spt-deep", "cub", "mae-vit-b16", "spt-paper", {"lr": "0.2"})["lr"] == 0.2
    # A micro task keeps its own epochs and the reference's 10% warm-up.
    micro = resolve_hparams("spt-deep", "digits", "micro-mae", "spt-paper", {})
    assert micro["warmup_epochs"] == pytest.approx(0.1 * micro["epochs"])


def test_recipe_that_fits_no_selected_method_is_one_clear_error():
    with pytest.raises(BenchError, match="recipe 'spt-paper' applies to"):
        Grid(["linear"], ["digits"], ["micro-mae"], [0], recipe="spt-paper")
    with pytest.raises(BenchError, match="unknown recipe"):
        Grid(["spt-deep"], ["digits"], ["micro-mae"], [0], recipe="spt-papr")


def test_record_carries_the_recipe_and_every_resolved_value(tiny_registered):
    backbone, task = tiny_registered
    spec = make_spec("spt-deep", task, backbone, 0, {"epochs": "1", "num_prompts": "2"})
    record = run(spec)
    assert record.spec.recipe == "spt-paper"
    assert record.recipe["name"] == "spt-paper" and record.recipe["sources"]
    # The tiny backbone has no pre-training: the recipe's `*` row applies.
    for key, value in RECIPES.get("spt-paper").values["*"].items():
        assert record.spec.hparams[key] == value


def test_parameter_groups_follow_the_reference_weight_decay_rule():
    prompt = torch.nn.Parameter(torch.zeros(2, 3, 4))
    head_w, head_b = torch.nn.Parameter(torch.zeros(5, 4)), torch.nn.Parameter(torch.zeros(5))
    learnable = [("trunk.prompts", prompt), ("head.weight", head_w), ("head.bias", head_b)]
    groups = parameter_groups(learnable, TrainConfig(weight_decay=1e-2, head_weight_decay=0.5))
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay == {id(prompt): 1e-2, id(head_w): 0.5, id(head_b): 0.0}
    # Without a head weight decay the head's weight decays like everything else (VPT's rule).
    groups = parameter_groups(learnable, TrainConfig(weight_decay=1e-2))
    assert {id(p): g["weight_decay"] for g in groups for p in g["params"]}[id(head_w)] == 1e-2


def _reference_lr(epoch: float, lr: float, min_lr: float, warmup: float, epochs: float) -> float:
    """SPT's `utils.adjust_learning_rate`, called with the fractional epoch step / steps_per_epoch + epoch."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_schedule_equals_the_reference_adjust_learning_rate():
    steps_per_epoch, epochs, warmup_epochs, lr, min_lr = 7, 20, 2, 5e-2, 1e-8
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = warmup_cosine(optimizer, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch, min_lr / lr)
    for step in range(epochs * steps_per_epoch):
        expected = _reference_lr(step / steps_per_epoch, lr, min_lr, warmup_epochs, epochs)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), step
        optimizer.step()
        schedule.step()


# The normalisation each registered backbone's weights were trained with, checked against timm's own pretrained
# configs where timm knows the weights (no download: these are timm's tables) and against MoCo-v3's ImageNet constants.
TRAINED_WITH = {
    "mae-vit-b16": timm.models.get_pretrained_cfg("vit_base_patch16_224.mae"),
    "sup21k-vit-b16": timm.models.get_pretrained_cfg("vit_base_patch16_224.orig_in21k"),
}


@pytest.mark.parametrize("name", list(TRAINED_WITH))
def test_named_backbones_normalise_as_their_weights_were_trained(name):
    entry, cfg = backbone_entry(name), TRAINED_WITH[name]
    assert (entry.mean, entry.std) == (tuple(cfg.mean), tuple(cfg.std))


def test_mocov3_normalises_with_imagenet_statistics():
    entry = backbone_entry("mocov3-vit-b16")
    assert (entry.mean, entry.std) == (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def test_normalisation_does_not_depend_on_where_the_weights_come_from(tmp_path):
    """`--weights FILE` for an MAE backbone is normalised like its hub copy (not timm's 0.5 of the bare
    architecture); packaged and random-init backbones keep their entry's statistics too."""
    from safetensors.torch import save_file

    micro = load_backbone("micro-mae")
    assert (micro.mean, micro.std) == (BACKBONES.get("micro-mae").mean, BACKBONES.get("micro-mae").std)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in micro.model.state_dict().items()}, str(path))
    from_file = load_backbone("micro-mae", weights=path)
    assert (from_file.mean, from_file.std) == (micro.mean, micro.std)
    # A timm name with a tag takes that tag's statistics even when its weights come from a file.
    assert backbone_entry("vit_base_patch16_224.mae").mean == IMAGENET_DEFAULT_MEAN
    assert backbone_entry("vit_base_patch16_224.mae").objective == "mae"
    assert backbone_entry("vit_base_patch16_224.augreg_in21k").mean == (0.5, 0.5, 0.5)


def test_per_epoch_schedule_holds_each_epochs_rate_as_vpts_trainer_does():
    steps_per_epoch, epochs, warmup = 4, 12, 3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, warmup, epochs, 0.0, steps_per_unit=steps_per_epoch)
    for step in range(epochs * steps_per_epoch):
        expected = _reference_lr(step // steps_per_epoch, 1.0, 0.0, warmup, epochs)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12), step
        optimizer.step()
        schedule.step()
    assert resolve_hparams("vpt-deep", "cub", "sup21k-vit-b16", "vpt-paper", {})["lr_step"] == "epoch"


# --- shared: one protocol for comparing methods ----------------------------------------------------------------------

# (task, backbone) pairs that cover every task family and the objectives whose reference lrs differ.
_SHARED_AT = [("digits", "micro-mae"), ("cub", "mae-vit-b16"), ("cifar100", "sup21k-vit-b16"),
              ("kitti-dist", "mocov3-vit-b16")]
# What "the same optimiser and budget" means: the values no method may differ in under `shared`.
_SHARED_KEYS = ("optimizer", "min_lr", "batch_size", "lr_step", "drop_path", "head_weight_decay", "epochs",
                "warmup_epochs")


@pytest.mark.parametrize("task,backbone", _SHARED_AT)
def test_shared_gives_every_registered_method_the_same_budget_pipeline_and_optimiser(task, backbone):
    from bench.method import METHODS
    from bench.recipes import resolve_protocol

    methods = METHODS.names()
    assert all(recipe_for(m, "shared") == "shared" for m in methods)
    grids = {m: Grid([m], [task], [backbone], [0], recipe="shared").tuning_specs() for m in methods}
    assert {len(specs) for specs in grids.values()} == {10}, {m: len(s) for m, s in grids.items()}
    # Every method searches the same weight decays, and five learning rates a factor 2 apart around its own.
    for method, specs in grids.items():
        lrs = sorted({s.hparams["lr"] for s in specs})
        centre = resolve_hparams(method, task, backbone, "shared", {})["lr"]
        assert lrs == pytest.approx([centre / 4, centre / 2, centre, 2 * centre, 4 * centre]), method
        assert sorted({s.hparams["weight_decay"] for s in specs}) == [1e-4, 1e-2], method
    pipelines = {m: resolve_protocol(task, backbone, recipe_for(m, "shared"), {}) for m in methods}
    assert len(set(pipelines.values())) == 1
    specs = [s for grid in grids.values() for s in grid]
    assert len({tuple(sorted(s.protocol.items())) for s in specs}) == 1
    for key in _SHARED_KEYS:
        assert len({s.hparams[key] for s in specs}) == 1, key


@pytest.mark.parametrize("method,backbone,lr", [
    ("spt-deep", "mae-vit-b16", 5e-2), ("vpt-shallow", "mae-vit-b16", 5e-2), ("vpt-deep", "sup21k-vit-b16", 1e-3),
    ("ssf", "sup21k-vit-b16", 5e-3), ("lora", "mae-vit-b16", 1e-3)])
def test_shared_centres_each_grid_on_the_methods_cited_reference_lr(method, backbone, lr):
    # SPT README.md (and VPT under SPT's AdamW), SSF's modal VTAB script lr, NOAH's LoRA script.
    assert resolve_hparams(method, "cub", backbone, "shared", {})["lr"] == lr


def test_shared_centres_a_method_without_a_reference_on_its_config_default():
    from bench.method import METHODS

    default = METHODS.get("full").config_cls().lr
    assert resolve_hparams("full", "cub", "mae-vit-b16", "shared", {})["lr"] == default
    assert search_grid("full", "mae-vit-b16", "shared", "cub")["lr"][2] == default


def test_a_per_method_recipe_value_reaches_only_its_method_and_its_families():
    # VPT's demo.ipynb:110-175 sets MODEL.PROMPT.DROPOUT 0.1 for VPT-deep only; the micro suite keeps 0.
    assert resolve_hparams("vpt-deep", "cub", "mae-vit-b16", "vpt-paper", {})["prompt_dropout"] == 0.1
    assert resolve_hparams("vpt-deep", "cifar100", "sup21k-vit-b16", "vpt-paper", {})["prompt_dropout"] == 0.1
    assert resolve_hparams("vpt-shallow", "cub", "mae-vit-b16", "vpt-paper", {})["prompt_dropout"] == 0.0
    assert resolve_hparams("spt-deep", "cub", "mae-vit-b16", "vpt-paper", {})["prompt_dropout"] == 0.0
    assert resolve_hparams("vpt-deep", "digits", "micro-mae", "vpt-paper", {})["prompt_dropout"] == 0.0
    # --set wins over it.
    assert resolve_hparams("vpt-deep", "cub", "mae-vit-b16", "vpt-paper", {"prompt_dropout": "0"})[
        "prompt_dropout"] == 0
