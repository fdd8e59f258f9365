"""The `ssf-paper`, `noah` and `adaptformer-paper` recipes against their reference code: SSF's per-task script values,
NOAH's LoRA baseline and its init, AdaptFormer's adapter on the residual and its BatchNorm head; options added for
them leave the ids of runs without them as they were."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import timm.scheduler
import torch
from scipy import stats
from torch import nn

import bench.methods  # noqa: F401  (registers the methods)
from bench import BenchError
from bench.cli import main
from bench.config import RunSpec
from bench.engine import run, warmup_cosine
from bench.methods.adaptformer import AdaptFormerConfig, AdaptFormerViT, Bottleneck
from bench.methods.lora import LoRAConfig, noah_init
from bench.protocol import Protocol, init_head
from bench.recipes import make_spec, resolve_hparams, resolve_protocol, search_grid
from bench.tasks.vtab import VTAB
from conftest import make_tiny_vit
import data_fixtures as fx

RESULTS = Path(__file__).parents[1] / "results"

# dongzelian/SSF train_scripts/vit/<folder>/train_ssf.sh, read from the scripts: --lr (L6), --weight-decay (L4),
# --drop-path (L7).
SSF_SCRIPTS = {
    "vtab/caltech101": ("caltech101", 1e-3, 5e-2, 0.1),
    "vtab/cifar_100": ("cifar100", 5e-3, 5e-5, 0.0),
    "vtab/clevr_count": ("clevr-count", 2e-3, 5e-2, 0.1),
    "vtab/clevr_dist": ("clevr-dist", 5e-2, 5e-2, 0.1),
    "vtab/diabetic_retinopathy": ("retinopathy", 5e-3, 5e-5, 0.2),
    "vtab/dmlab": ("dmlab", 5e-3, 5e-5, 0.1),
    "vtab/dsprites_loc": ("dsprites-loc", 1e-2, 5e-5, 0.0),
    "vtab/dsprites_ori": ("dsprites-ori", 5e-3, 5e-5, 0.2),
    "vtab/dtd": ("dtd", 5e-3, 5e-5, 0.0),
    "vtab/eurosat": ("eurosat", 3e-3, 5e-2, 0.2),
    "vtab/flowers102": ("flowers102", 5e-3, 5e-5, 0.0),
    "vtab/kitti": ("kitti-dist", 1e-2, 5e-5, 0.0),
    "vtab/patch_camelyon": ("camelyon", 5e-3, 5e-5, 0.0),
    "vtab/pets": ("pets", 5e-3, 5e-5, 0.0),
    "vtab/resisc45": ("resisc45", 2e-3, 5e-5, 0.1),
    "vtab/smallnorb_azi": ("smallnorb-azi", 2e-2, 5e-5, 0.1),
    "vtab/smallnorb_ele": ("smallnorb-ele", 5e-3, 5e-2, 0.2),
    "vtab/sun397": ("sun397", 5e-3, 5e-5, 0.0),
    "vtab/svhn": ("svhn", 1e-2, 5e-5, 0.0),
    "fgvc/cub_2011": ("cub", 1e-2, 5e-2, 0.0),
    "fgvc/nabirds": ("nabirds", 2e-4, 0.05, 0.1),
    "fgvc/oxford_flowers": ("flowers", 1e-2, 0.05, 0.1),
    "fgvc/stanford_cars": ("cars", 2e-2, 0.05, 0.0),
    "fgvc/stanford_dogs": ("dogs", 2.5e-4, 0.05, 0.0),
}


def test_ssf_scripts_cover_every_vtab_task():
    assert {task for task, *_ in SSF_SCRIPTS.values()} >= {t.name for t in VTAB}


@pytest.mark.parametrize("folder", list(SSF_SCRIPTS))
def test_ssf_paper_resolves_each_tasks_script_values(folder):
    task, lr, weight_decay, drop_path = SSF_SCRIPTS[folder]
    hparams = resolve_hparams("ssf", task, "sup21k-augreg-vit-b16", "ssf-paper", {})
    assert (hparams["lr"], hparams["weight_decay"], hparams["drop_path"]) == (lr, weight_decay, drop_path)
    # Every script: --opt adamw (L4), --batch-size 32 on 2 GPUs (L1, L3), --epochs 100, --warmup-epochs 10,
    # --min-lr 1e-8, the scheduler stepped per epoch (train.py:709).
    assert (hparams["optimizer"], hparams["batch_size"], hparams["epochs"], hparams["warmup_epochs"],
            hparams["min_lr"], hparams["lr_step"]) == ("adamw", 64, 100, 10, 1e-8, "epoch")
    # The reference fixed one lr per task: the tune grid brackets it.
    assert search_grid("ssf", "sup21k-augreg-vit-b16", "ssf-paper", task)["lr"] == [2 * lr, lr, lr / 2]
    # data/loader.py:257 drop_last=is_training.
    assert resolve_protocol(task, "sup21k-augreg-vit-b16", "ssf-paper", {}).drop_last is True


@pytest.mark.parametrize("recipe,method,task,warmup_lr,min_lr,cooldown", [
    ("ssf-paper", "ssf", "clevr-dist", 1e-7, 1e-8, 10),  # SSF train_ssf.sh L5-L6, train.py:202
    ("noah", "lora", "cifar100", 1e-6, 1e-5, 0),  # NOAH supernet_train_prompt.py:98,100,400
])
def test_the_recipes_schedule_is_timms_cosine_scheduler_epoch_by_epoch(recipe, method, task, warmup_lr, min_lr,
                                                                        cooldown):
    hparams = resolve_hparams(method, task, "sup21k-augreg-vit-b16", recipe, {})
    assert (hparams["warmup_lr"], hparams["min_lr"], hparams["warmup_prefix"], hparams.get("cooldown_epochs", 0)) \
        == (warmup_lr, min_lr, False, cooldown)
    lr, epochs, warmup, steps_per_epoch = hparams["lr"], hparams["epochs"], round(hparams["warmup_epochs"]), 3
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = warmup_cosine(optimizer, warmup, epochs, min_lr / lr, steps_per_epoch, warmup_lr / lr, prefix=False)
    # The reference: timm's CosineLRScheduler as create_scheduler builds it (t_initial=epochs, warmup inside).
    reference_optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    reference = timm.scheduler.CosineLRScheduler(reference_optimizer, t_initial=epochs, lr_min=min_lr,
                                                 warmup_lr_init=warmup_lr, warmup_t=warmup, warmup_prefix=False)
    for step in range((epochs + cooldown) * steps_per_epoch):
        reference.step(step // steps_per_epoch)
        expected = reference_optimizer.param_groups[0]["lr"]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-15), step
        optimizer.step()
        schedule.step()


def test_cool_down_epochs_train_after_the_schedule(tiny_registered):
    backbone, task = tiny_registered
    record = run(make_spec("ssf", task, backbone, 0, {"epochs": "2", "cooldown_epochs": "1", "batch_size": "16"},
                           recipe="ssf-paper"))
    assert len(record.curves["train_loss"]) == 3


def test_a_task_scope_wins_over_family_and_objective_and_set_wins_over_it():
    assert resolve_hparams("ssf", "clevr-dist", "mae-vit-b16", "ssf-paper", {})["lr"] == 5e-2
    assert resolve_hparams("ssf", "clevr-dist", "mae-vit-b16", "ssf-paper", {"lr": "0.3"})["lr"] == 0.3
    # A task SSF did not run takes the modal VTAB values.
    assert resolve_hparams("ssf", "digits", "micro-mae", "ssf-paper", {})["lr"] == 5e-3


def test_noah_resolves_the_lora_baselines_values():
    hparams = resolve_hparams("lora", "cifar100", "sup21k-vit-b16", "noah", {})
    # configs/LoRA/VTAB/slurm_train_lora_vtab.sh:12,22,36; supernet_train_prompt.py:59,74,100,107,207.
    expected = dict(optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=64, epochs=100, min_lr=1e-5,
                    warmup_epochs=10, drop_path=0.1, rank=8, alpha=8.0, targets="qkv", dropout=0.1, init="noah",
                    lr_step="epoch")
    assert {key: hparams[key] for key in expected} == expected
    # lib/datasets.py:227-241 ImageNet mean/std; drop_last=True (L275-280); no --amp.
    pipeline = resolve_protocol("cifar100", "sup21k-vit-b16", "noah", {})
    assert (pipeline.normalisation, pipeline.drop_last, pipeline.precision, pipeline.head_init) == \
        ("imagenet", True, "fp32", "trunc-normal-0.02")


def test_adaptformer_paper_resolves_the_codes_values():
    hparams = resolve_hparams("adaptformer", "cifar100", "mae-vit-b16", "adaptformer-paper", {})
    # main_image.py:253 lr = blr * batch / 256 with --blr 0.1; :266 SGD; :47 wd 0; :58 20 warm-up epochs; :55 min 0.
    expected = dict(optimizer="sgd", lr=0.1 * 128 / 256, batch_size=128, weight_decay=0.0, min_lr=0.0,
                    warmup_epochs=20, lr_step="batch", bottleneck=64, scale=0.1, adapter_input="residual",
                    dropout=0.1, drop_path=0.0)
    assert {key: hparams[key] for key in expected} == expected
    pipeline = resolve_protocol("cub", "mae-vit-b16", "adaptformer-paper", {})
    assert (pipeline.head_init, pipeline.drop_last) == ("bn-trunc-normal-0.01", True)


def test_options_added_for_the_recipes_leave_the_ids_of_runs_without_them():
    # `bench check`'s committed baseline holds LoRA specs resolved before `init` existed.
    baseline = json.loads((RESULTS / "baselines" / "check.json").read_text())["runs"]
    lora = [RunSpec(**entry["spec"]) for entry in baseline if entry["spec"]["method"] == "lora"]
    assert lora
    for spec in lora:
        again = make_spec("lora", spec.task, spec.backbone, spec.seed, {"epochs": "4"}, recipe="spt-paper")
        assert again.run_id == spec.run_id
    assert "init" not in LoRAConfig().to_dict() and LoRAConfig(init="noah").to_dict()["init"] == "noah"
    assert not {"adapter_input", "dropout"} & set(AdaptFormerConfig().to_dict())
    # A config read back from a spec without them takes their defaults.
    assert AdaptFormerConfig.from_overrides(AdaptFormerConfig().to_dict()) == AdaptFormerConfig()


def _wide_vit() -> nn.Module:
    """One ViT-B-wide block (768 features, as NOAH's (8, 768) LoRA A), on 32-pixel images."""
    return make_tiny_vit(perturb=False, embed_dim=768, depth=1, num_heads=12)


def _lora_factors(vit: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    (layer,) = [m for m in vit.modules() if isinstance(m, LoraLayer)]
    return layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()


def _inject_lora(vit: nn.Module) -> None:
    import peft

    peft.inject_adapter_in_model(peft.LoraConfig(r=8, lora_alpha=8, target_modules=r"blocks\.\d+\.attn\.qkv"), vit)


def test_noahs_kaiming_draw_of_a_is_pefts_bound_one_over_sqrt_768():
    # NOAH model/supernet_vision_transformer_timm.py:225-226: nn.Linear(768, 8), kaiming_uniform_(a=sqrt(5)).
    noah_a = nn.Linear(768, 8, bias=False).weight
    assert noah_a.shape == (8, 768)  # fan-in 768, not 8
    a = math.sqrt(5)
    bound = math.sqrt(6 / ((1 + a**2) * 768))
    assert bound == pytest.approx(1 / math.sqrt(768)) and bound == pytest.approx(0.0361, abs=1e-4)
    torch.manual_seed(0)
    nn.init.kaiming_uniform_(noah_a, a=a)
    vit = _wide_vit()
    torch.manual_seed(0)
    _inject_lora(vit)
    peft_a, peft_b = _lora_factors(vit)
    for weights in (noah_a.detach(), peft_a):
        assert weights.abs().max() <= bound and weights.abs().max() > 0.99 * bound
        assert stats.kstest(weights.flatten().double().numpy(), stats.uniform(-bound, 2 * bound).cdf).pvalue > 0.01
    assert torch.count_nonzero(peft_b) == 0


def test_noah_init_redraws_a_and_b_from_a_truncated_normal_of_std_002():
    # NOAH's init_weights (L462, L531) applies _init_vit_weights: trunc_normal_(std=.02) to every non-head Linear.
    vit = _wide_vit()
    torch.manual_seed(0)
    _inject_lora(vit)
    noah_init(vit)
    reference = stats.truncnorm(-2 / 0.02, 2 / 0.02, scale=0.02)
    for weights in _lora_factors(vit):
        assert stats.kstest(weights.flatten().double().numpy(), reference.cdf).pvalue > 0.01


@pytest.mark.parametrize("noah", [False, True])
def test_noah_init_starts_away_from_the_backbone_where_pefts_starts_on_it(noah):
    vit = _wide_vit()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = vit(images)
        _inject_lora(vit)
        if noah:
            noah_init(vit)
        after = vit(images)
    assert torch.allclose(before, after, atol=1e-6) != noah


def test_a_run_under_noah_records_its_init_and_dora_refuses_it(tiny_registered):
    backbone, task = tiny_registered
    record = run(make_spec("lora", task, backbone, 0, {"epochs": "1", "batch_size": "16"}, recipe="noah"))
    assert record.spec.hparams["init"] == "noah" and record.status == "done"
    with pytest.raises(BenchError, match="bad value init='noah'"):
        make_spec("dora", task, backbone, 0, {"init": "noah"})


def _hand_block(block: nn.Module, adapter: Bottleneck, x: torch.Tensor, adapter_reads: str) -> torch.Tensor:
    """timm's block in eval mode (no drop-path, identity LayerScale), with AdaptFormer's adapter written out; norm2
    and the MLP are called through their parts, which carry no hooks."""
    x = x + block.attn(block.norm1(x))
    norm = block.norm2
    normed = nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(normed)))
    source = x if adapter_reads == "residual" else normed
    delta = adapter.scale * (torch.relu(source @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
                             + adapter.up.bias)
    return x + mlp + delta


@pytest.mark.parametrize("adapter_input", ["residual", "normed"])
def test_adaptformer_adapter_reads_what_the_option_says(adapter_input):
    vit = make_tiny_vit()
    trunk = AdaptFormerViT(vit, "token", 8, 0.1, torch.Generator().manual_seed(0), adapter_input, dropout=0.1)
    with torch.no_grad():
        for adapter in trunk.adapters:
            adapter.up.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    trunk.eval()
    block, adapter = vit.blocks[0], trunk.adapters[0]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hooked = block(x)
        assert torch.allclose(hooked, _hand_block(block, adapter, x, adapter_input), atol=1e-5)
        other = "normed" if adapter_input == "residual" else "residual"
        assert not torch.allclose(hooked, _hand_block(block, adapter, x, other), atol=1e-3)


def test_adaptformer_dropout_acts_on_the_relu_output_in_training():
    # AdaptFormer models/adapter.py:55-59: down, ReLU, dropout, up, times the scale.
    adapter = Bottleneck(16, 8, 0.1, torch.Generator().manual_seed(0), dropout=0.1).train()
    with torch.no_grad():
        adapter.up.weight.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    ours = adapter(x)
    torch.manual_seed(3)
    hidden = nn.functional.dropout(torch.relu(adapter.down(x)), p=0.1, training=True)
    assert torch.equal(ours, 0.1 * adapter.up(hidden))
    assert torch.equal(adapter.eval()(x), 0.1 * adapter.up(torch.relu(adapter.down(x))))


def test_bn_head_is_adaptformers_batchnorm_then_a_linear_of_std_001():
    torch.manual_seed(0)
    head = init_head(nn.Linear(768, 200), "bn-trunc-normal-0.01")
    norm, linear = head
    assert isinstance(norm, nn.BatchNorm1d) and not norm.affine and norm.eps == 1e-6
    reference = stats.truncnorm(-2 / 0.01, 2 / 0.01, scale=0.01)
    assert stats.kstest(linear.weight.detach().flatten().double().numpy(), reference.cdf).pvalue > 0.01
    assert torch.count_nonzero(linear.bias) == 0
    # In training it standardises each feature over the batch (biased variance), as BatchNorm1d(affine=False) does.
    features = 3 + 2 * torch.randn(32, 768, generator=torch.Generator().manual_seed(1))
    standard = (features - features.mean(0)) / torch.sqrt(features.var(0, unbiased=False) + 1e-6)
    assert torch.allclose(head.train()(features), linear(standard), atol=1e-4)
    assert Protocol.from_values({"head_init": "bn-trunc-normal-0.01"}).head_init == "bn-trunc-normal-0.01"


def test_a_run_under_adaptformer_paper_trains_its_bn_head(tiny_registered):
    backbone, task = tiny_registered
    spec = make_spec("adaptformer", task, backbone, 0, {"epochs": "1", "batch_size": "16",
                                                        "head_init": "bn-trunc-normal-0.01"},
                     recipe="adaptformer-paper")
    record = run(spec)
    assert record.status == "done" and record.protocol["head_init"] == "bn-trunc-normal-0.01"
    assert record.spec.hparams["adapter_input"] == "residual"


def test_dry_run_shows_ssfs_per_task_learning_rates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    for name in ("clevr-dist", "svhn", "caltech101"):
        task = next(t for t in VTAB if t.name == name)
        fx.vtab_noah(tmp_path / "data", folder=task.folders[0], classes=2, per_class=1)
    assert main(["run", "--methods", "ssf", "--tasks", "clevr-dist,svhn,caltech101", "--recipe", "ssf-paper",
                 "--backbone", "micro-mae", "--protocol", "fixed", "--data-root", str(tmp_path / "data"),
                 "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    rows = {line.split("│")[3].strip(): line for line in capsys.readouterr().out.splitlines() if "ssf-paper" in line}
    for task, lr, weight_decay, drop_path in (("clevr-dist", 0.05, 0.05, 0.1), ("svhn", 0.01, 5e-05, 0.0),
                                              ("caltech101", 0.001, 0.05, 0.1)):
        assert re.search(rf"\blr={lr},.*weight_decay={weight_decay},.*drop_path={drop_path}\b", rows[task]), task
        assert "drop_last=True" in rows[task]
