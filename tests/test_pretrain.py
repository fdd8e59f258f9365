"""MAE pre-training of the micro backbone: the pieces that decide whether the weights mean anything."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import torch

from bench.backbone import BACKBONES, MICRO_ARCH, create_vit, load_backbone
from bench.data import TASKS
from bench.pretrain import MAERecipe, MaskedAutoencoder, build_corpus, pretrain_mae, save_encoder, sincos_2d
import bench.tasks  # noqa: F401  (registers the micro tasks)

TINY = MAERecipe(
    epochs=3, batch_size=64, warmup_epochs=1,
    corpus_held_out_digits=64, corpus_photo_crops=64, corpus_sprites=64, corpus_scenes=64,
)


def _mae(recipe: MAERecipe = TINY) -> MaskedAutoencoder:
    return MaskedAutoencoder(create_vit("vit_tiny_patch16_224", dict(num_classes=0, **MICRO_ARCH), 0), recipe)


def test_patchify_orders_pixels_patch_by_patch_in_raster_order() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    patches = _mae().patchify(images)
    assert patches.shape == (2, 64, 4 * 4 * 3)
    # Patch (row 1, col 2) of image 1, channel-last within the patch.
    expected = images[1, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[1, 1 * 8 + 2], expected)


def test_sincos_embedding_is_distinct_per_position_and_bounded() -> None:
    table = sincos_2d(192, 8)
    assert table.shape == (64, 192)
    assert table.abs().max() <= 1.0
    assert torch.cdist(table, table).fill_diagonal_(float("inf")).min() > 0.1


def test_masked_loss_is_lower_when_the_decoder_is_trained_than_at_init() -> None:
    encoder, log = pretrain_mae(TINY)
    assert len(log["loss"]) == TINY.epochs
    assert log["loss"][-1] < log["loss"][0]
    assert sum(log["corpus"].values()) == len(build_corpus(TINY)[0])


def test_fixed_position_embedding_stays_the_sine_cosine_table_and_a_trained_one_moves() -> None:
    short = dataclasses.replace(TINY, epochs=1)
    table = torch.cat([torch.zeros(1, 192), sincos_2d(192, 8)]).unsqueeze(0)
    fixed, log = pretrain_mae(short)
    assert log["recipe"]["fixed_pos_embed"] is True  # MAE's choice, the default
    assert torch.equal(fixed.pos_embed.detach(), table)
    assert not fixed.pos_embed.requires_grad
    trained, _ = pretrain_mae(dataclasses.replace(short, fixed_pos_embed=False))
    assert not torch.equal(trained.pos_embed.detach(), table)
    # Everything else still learns.
    assert not torch.equal(fixed.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)


def test_same_seed_gives_the_same_loss_curve() -> None:
    short = dataclasses.replace(TINY, epochs=1)
    assert pretrain_mae(short)[1]["loss"] == pretrain_mae(short)[1]["loss"]


def test_corpus_shares_no_image_with_any_micro_task() -> None:
    corpus, _ = build_corpus(TINY)
    seen = {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in corpus}
    for name in ("digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count"):
        data = TASKS.get(name).load(None)
        for split in (data.train, data.val, data.test):
            assert not any(hashlib.sha1(img.numpy().tobytes()).hexdigest() in seen for img in split.images), name


def test_saved_encoder_loads_as_the_micro_backbone(tmp_path) -> None:
    encoder = create_vit(BACKBONES.get("micro-vit").timm_name, dict(num_classes=0, **MICRO_ARCH), 3)
    path = tmp_path / "enc.safetensors"
    save_encoder(encoder, path)
    loaded = load_backbone("micro-vit", weights=path)
    assert loaded.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for name, param in encoder.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], param.half().float())


def test_bench_pretrain_mae_writes_the_encoder_it_trained_with_its_log_and_it_loads_as_micro_mae(
    tmp_path, monkeypatch
) -> None:
    import bench.pretrain
    from bench.cli import main

    # The shipped corpus takes about a minute an epoch on 2 cores, so the command starts from TINY's corpus sizes;
    # everything else (its seed, --epochs, the fixed position embedding, the file and its log) is the command's own.
    corpus = {f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY) if f.name.startswith("corpus_")}
    monkeypatch.setattr(bench.pretrain, "MAERecipe", functools.partial(MAERecipe, **corpus))
    out = tmp_path / "weights" / "mae.safetensors"
    assert main(["pretrain", "mae", "--epochs", "1", "--seed", "3", "--out", str(out)]) == 0

    log = json.loads(out.with_suffix(".log.json").read_text())
    assert log["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (log["recipe"]["seed"], log["recipe"]["epochs"], log["recipe"]["fixed_pos_embed"]) == (3, 1, True)
    assert len(log["loss"]) == 1
    backbone = load_backbone("micro-mae", weights=out)
    assert (backbone.checkpoint_format, backbone.checkpoint_sha256) == ("timm", log["sha256"])
    # The file holds what the library trains from the same recipe, stored in half precision.
    trained, _ = pretrain_mae(MAERecipe(**{**corpus, "seed": 3, "epochs": 1}))
    loaded = backbone.model.state_dict()
    for name, param in trained.state_dict().items():
        assert torch.equal(loaded[name], param.half().float()), name
