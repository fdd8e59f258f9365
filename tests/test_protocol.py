"""The pipeline a recipe resolves (bench.protocol), checked against the reference code: the values per recipe, task
family and backbone objective, each paper pipeline pixel for pixel against the reference's own torchvision
composition, head inits by their distribution, and the last partial batch as each reference's loader treats it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from bench.cli import main
from bench.data import Preprocess, tensor_batches
from bench import BenchError
from bench.engine import Caches, _batches, prepare, steps_in_epoch
from bench.imagefiles import FileSplit
from bench.protocol import PIPELINES, Protocol, init_head
from bench.recipes import make_spec, resolve_hparams, resolve_protocol
from bench.tasks.fgvc import TRANSFORMS as FGVC_TRANSFORMS

_SPT = dict(normalisation="imagenet", drop_last=True, precision="fp32", prompt_images="train", shallow_init="sampled")
_VPT = dict(normalisation="imagenet", head_init="kaiming-fan-out", precision="fp32", drop_last=False)

# (recipe, task, backbone) -> pipeline values of the reference code (sources: bench/recipes.py, docs/recipes.md).
REFERENCE = {
    # SPT Dataset/FGVC.py:47-59 (the family's own pipeline), train_MAE.py:82-87 drop_last, :273 head std .02.
    ("spt-paper", "cub", "mae-vit-b16"): {**_SPT, "transforms": "task", "head_init": "trunc-normal-0.02"},
    # train.py (supervised in21k) normalises with ImageNet's statistics too (Dataset/VTAB.py:55).
    ("spt-paper", "cifar100", "sup21k-vit-b16"): {**_SPT, "transforms": "spt-vtab", "head_init": "trunc-normal-0.02"},
    # train_MoCo.py:260 trunc_normal_(std=.01).
    ("spt-paper", "cub", "mocov3-vit-b16"): {**_SPT, "transforms": "task", "head_init": "trunc-normal-0.01"},
    ("spt-paper", "kitti-dist", "mocov3-vit-b16"): {**_SPT, "transforms": "spt-vtab", "head_init": "trunc-normal-0.01"},
    # VPT src/data/transforms.py:20-40, src/models/mlp.py:52-57, src/data/loader.py:53-58 (one GPU keeps it).
    # VPT train.py:66-71: FGVC's final runs train on train, VTAB's on train+val; on MAE, VPT pools through a fresh
    # fc_norm (src/models/vit_backbones/vit_mae.py:21-25).
    ("vpt-paper", "cub", "sup21k-vit-b16"): {**_VPT, "transforms": "vpt-fgvc", "final_train": "train",
                                             "pool_norm": "checkpoint"},
    ("vpt-paper", "cub", "mae-vit-b16"): {**_VPT, "transforms": "vpt-fgvc", "final_train": "train",
                                          "pool_norm": "fresh"},
    ("vpt-paper", "cifar100", "mae-vit-b16"): {**_VPT, "transforms": "task", "final_train": "train+val",
                                               "pool_norm": "fresh"},
    # The micro suite keeps the harness's pipeline under either recipe: its committed study ran on it.
    ("spt-paper", "digits", "micro-mae"): Protocol().to_dict(),
    ("vpt-paper", "digits", "micro-mae"): Protocol().to_dict(),
}


@pytest.mark.parametrize("recipe,task,backbone", list(REFERENCE))
@pytest.mark.parametrize("method", ["spt-shallow", "vpt-deep"])
def test_recipe_pipeline_is_the_reference_codes(recipe, task, backbone, method):
    resolved = resolve_protocol(task, backbone, recipe, {}).to_dict()
    for key, value in REFERENCE[(recipe, task, backbone)].items():
        assert resolved[key] == value, f"{recipe} on {task}/{backbone}: {key}"
    spec = make_spec(method, task, backbone, 0, recipe=recipe)
    assert spec.protocol == resolve_protocol(task, backbone, recipe, {}).changes()


def test_spt_on_mocov3_draws_prompts_from_one_image_and_len_train_otherwise():
    # train_MoCo.py:100 prompt_generator(..., sample_size=1); train_MAE.py:99-103, train.py:99-103: len(train_data).
    assert resolve_hparams("spt-deep", "cub", "mocov3-vit-b16", "spt-paper", {})["init_images"] == 1
    for backbone in ("mae-vit-b16", "sup21k-vit-b16"):
        assert resolve_hparams("spt-deep", "cub", backbone, "spt-paper", {})["init_images"] == 0


def test_a_protocol_value_is_overridden_by_set_and_a_harness_run_keeps_its_id():
    spec = make_spec("spt-shallow", "cub", "mae-vit-b16", 0, {"shallow_init": "as_named", "precision": "auto"})
    assert "shallow_init" not in spec.protocol and "precision" not in spec.protocol
    assert spec.protocol["drop_last"] is True
    assert make_spec("spt-deep", "cub", "mae-vit-b16", 0, {"drop_last": "false"}).protocol.get("drop_last") is None
    harness = make_spec("spt-deep", "digits", "micro-mae", 0)
    assert harness.protocol == {} and "protocol" not in harness.to_dict()


@pytest.mark.parametrize("images,steps_kept,steps_dropped", [(400, 13, 12), (1000, 32, 31), (5994, 188, 187)])
def test_drop_last_trains_the_steps_of_each_references_loader(images, steps_kept, steps_dropped):
    # SPT: 2 GPUs x 16 with drop_last=True (train_MAE.py:72, :82-87) = floor(ceil(N/2)/16) steps; VPT keeps it.
    assert math.floor(math.ceil(images / 2) / 16) == steps_dropped
    assert steps_in_epoch(images, 32, drop_last=True) == steps_dropped
    assert steps_in_epoch(images, 32, drop_last=False) == steps_kept
    inputs, labels = torch.zeros(images, 1), torch.arange(images)
    for drop_last, steps in ((True, steps_dropped), (False, steps_kept)):
        drawn = list(_batches(tensor_batches(inputs, labels, 32, torch.Generator().manual_seed(0)), 32,
                              Protocol(drop_last=drop_last)))
        assert len(drawn) == steps
        assert sum(len(y) for _, y in drawn) == (steps * 32 if drop_last else images)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Image.Image, str]:
    """A wide, textured image (KITTI-like aspect), saved losslessly so that the file path decodes the same pixels."""
    gen = np.random.default_rng(0)
    array = (gen.random((150, 497, 3)) * 255).astype(np.uint8)
    array[:, ::7] = 255  # structure a crop or a resize would move
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.fromarray(array).save(path)
    return Image.open(path).convert("RGB"), str(path)


# The references' compositions as their files write them (`interpolation=3` is PIL's BICUBIC).
SPT_VTAB = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
SPT_FGVC_TRAIN = T.Compose([T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BICUBIC),
                            T.RandomHorizontalFlip(0.5)])
SPT_FGVC_EVAL = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
VPT_FGVC_TRAIN = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(0.5)])
VPT_FGVC_EVAL = T.Compose([T.Resize(256), T.CenterCrop(224)])


@pytest.mark.parametrize("pipelines,reference_train,reference_eval", [
    ("spt-vtab", SPT_VTAB, SPT_VTAB),
    ("vpt-fgvc", VPT_FGVC_TRAIN, VPT_FGVC_EVAL),
    ("fgvc", SPT_FGVC_TRAIN, SPT_FGVC_EVAL),
])
def test_paper_pipelines_equal_the_references_composition_pixel_for_pixel(photo, pipelines, reference_train,
                                                                          reference_eval):
    image, path = photo
    transforms = FGVC_TRANSFORMS if pipelines == "fgvc" else PIPELINES.get(pipelines)
    split = FileSplit([(path, 0)], FGVC_TRANSFORMS, workers=0).with_transforms(transforms)
    # The eval pass, through the split a run reads.
    (evaluated,) = list(split.image_batches(torch.tensor([0]), 1))
    assert torch.equal(evaluated[0], pil_to_tensor(reference_eval(image)))
    # The training pass under one image's seed, as the file path seeds torchvision's global RNG.
    gen = torch.Generator().manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(5)))
    (trained,) = list(split.image_batches(torch.tensor([0]), 1, gen))
    torch.manual_seed(seed)
    assert torch.equal(trained[0], pil_to_tensor(reference_train(image)))


def test_imagenet_normalisation_equals_the_references_normalize(photo):
    image, _ = photo
    mean, std = Protocol(normalisation="imagenet").mean_std((0.5,) * 3, (0.5,) * 3)
    ours = Preprocess(224, mean, std)(pil_to_tensor(SPT_VTAB(image))[None])[0]
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])(SPT_VTAB(image))
    assert torch.allclose(ours, reference, atol=1e-5)
    assert Protocol().mean_std((0.5,) * 3, (0.5,) * 3) == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("name,classes,std", [("kaiming-fan-out", 200, math.sqrt(2 / 200)),
                                              ("kaiming-fan-out", 10, math.sqrt(2 / 10)),
                                              ("trunc-normal-0.01", 200, 0.01), ("trunc-normal-0.02", 200, 0.02)])
def test_head_inits_have_the_references_distribution(name, classes, std):
    torch.manual_seed(0)
    head = nn.Linear(768, classes)
    init_head(head, name)
    weights = head.weight.detach().flatten().double().numpy()
    # trunc_normal_ cuts at +-2 (absolute: nothing at these scales); kaiming_normal_ does not truncate.
    reference = stats.norm(scale=std) if name == "kaiming-fan-out" else stats.truncnorm(-2 / std, 2 / std, scale=std)
    assert stats.kstest(weights, reference.cdf).pvalue > 0.01
    bias = -math.log((1 - 0.01) / 0.01) if name == "kaiming-fan-out" else 0.0  # VPT mlp.py:55-57
    assert torch.allclose(head.bias, torch.full((classes,), bias))


def test_dry_run_shows_every_resolved_value_per_task(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["run", "--methods", "spt-shallow", "--tasks", "digits", "--backbone", "micro-mae",
                 "--results", str(tmp_path), "--protocol", "fixed", "--set", "drop_last=true", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "spt-paper" in out and "lr=0.05" in out and "head_weight_decay=0.5" in out
    assert re.search(r"drop_last=True", out) and "init_images=0" in out


@pytest.mark.parametrize("setting, expected", [
    ("precision=fp16", "bad value precision='fp16'; expected auto | fp32"),
    ("drop_last=maybe", "bad value drop_last='maybe'; expected true or false"),
    ("transforms=nope", "bad value transforms='nope'; expected task | vpt-fgvc | spt-vtab"),
])
def test_a_bad_pipeline_value_is_one_line_and_exit_2_before_anything_runs(setting, expected, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--methods", "linear", "--tasks", "digits", "--set", setting, "--dry-run",
                 "--results", str(results)]) == 2
    assert capsys.readouterr().err.strip() == f"bench: error: {expected}"
    assert not results.exists()


def test_a_fresh_pool_norm_pools_the_mean_through_layernorm_with_weight_1_and_bias_0(images):
    # VPT's MAE fc_norm: LayerNorm(768, eps=1e-6), absent from the checkpoint, frozen.
    spec = make_spec("vpt-deep", "digits", "micro-mae", 0, {"num_prompts": "2", "pool_norm": "fresh"}, recipe="none")
    prepared = prepare(spec, torch.device("cpu"), None, Caches())
    trunk = prepared.adapted.trunk.eval()
    norm = trunk.vit.norm
    with torch.no_grad():
        *_, tokens = trunk.forward_tokens(images)
        pooled = trunk(images)
    mean = tokens[:, trunk.vit.num_prefix_tokens:].mean(dim=1)  # the prompts are in the mean, as in VPT's MAE
    expected = nn.functional.layer_norm(mean, (mean.shape[-1],), eps=1e-6)
    assert torch.allclose(pooled, expected, atol=1e-5)
    assert norm.eps == 1e-6 and not any(p.requires_grad for p in norm.parameters())
    assert not any("norm" in name for name, _ in prepared.learnable)
    # The checkpoint's own norm, which `checkpoint` keeps, is not the identity: the two pool differently.
    checkpoint = prepare(make_spec("vpt-deep", "digits", "micro-mae", 0, {"num_prompts": "2"}, recipe="none"),
                         torch.device("cpu"), None, Caches())
    assert not torch.allclose(checkpoint.backbone.model.norm.weight, torch.ones_like(norm.weight))


def test_a_fresh_pool_norm_on_a_class_token_backbone_is_one_clear_error():
    with pytest.raises(BenchError, match="pool_norm=fresh replaces the norm of a mean-pooled backbone"):
        resolve_protocol("cub", "sup21k-vit-b16", None, {"pool_norm": "fresh"})


@pytest.mark.parametrize("final_train,size", [("train+val", 48 + 16), ("train", 48)])
def test_the_final_stage_trains_on_what_final_train_names(tiny_registered, final_train, size):
    backbone, task = tiny_registered
    spec = make_spec("linear", task, backbone, 0, {"final_train": final_train}, stage="final")
    assert len(prepare(spec, torch.device("cpu"), None, Caches()).train_split) == size
    # The other stages train on train whatever it says.
    tune = make_spec("linear", task, backbone, 0, {"final_train": final_train}, stage="tune")
    assert len(prepare(tune, torch.device("cpu"), None, Caches()).train_split) == 48
