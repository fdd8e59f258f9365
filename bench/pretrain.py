"""Masked-autoencoder pre-training (He et al., CVPR 2022) of the micro backbone, offline, on CPU.

The corpus is disjoint from every micro task's images by construction: the digit images the tasks leave out
(`bench.tasks.micro.pretraining_pool`), sprites and scenes rendered from seed streams the tasks never use, and random
crops of the two photographs that ship with scikit-learn. The encoder is the `micro-vit` architecture; the decoder is light
(2 blocks, width 128) and is thrown away. The loss is MSE on masked patches, each patch's pixels normalised by their
own mean and variance (MAE's `norm_pix_loss`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from bench.backbone import BACKBONES, MICRO_ARCH, create_vit
from bench.data import Preprocess
from bench.engine import warmup_cosine


@dataclass(frozen=True)
class MAERecipe:
    seed: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    corpus_held_out_digits: int | None = None  # None: every digit image the micro tasks leave out
    corpus_photo_crops: int = 5000
    corpus_sprites: int = 3000
    corpus_scenes: int = 3000
    # MAE keeps the encoder's sine-cosine position embedding fixed. Training it (False: the first shipped weights) left
    # the mean-pooled probe 3.4 points lower on digits and 2.7 on sprites-loc (MODEL_CARD.md); with mean pooling
    # nothing but the position embedding carries position downstream.
    fixed_pos_embed: bool = True


def sincos_2d(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (grid² × D), MAE's choice for both encoder and decoder."""
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = [f(pos.flatten()[:, None] * omega[None]) for pos in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


class MaskedAutoencoder(nn.Module):
    def __init__(self, encoder: VisionTransformer, recipe: MAERecipe) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = recipe.mask_ratio
        grid = encoder.patch_embed.grid_size[0]
        self.patch = encoder.patch_embed.patch_size[0]
        with torch.no_grad():
            encoder.pos_embed[0, 1:] = sincos_2d(encoder.embed_dim, grid)
            encoder.pos_embed[0, :1] = 0
        encoder.pos_embed.requires_grad_(not recipe.fixed_pos_embed)
        dim = recipe.decoder_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos", torch.cat([torch.zeros(1, dim), sincos_2d(dim, grid)]).unsqueeze(0))
        self.decoder_blocks = nn.Sequential(*[Block(dim, recipe.decoder_heads) for _ in range(recipe.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * 3)
        trunc_normal_(self.mask_token, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        b, n, d = tokens.shape
        keep = int(n * (1 - self.mask_ratio))
        noise = torch.rand(b, n, generator=generator).to(images.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = tokens.gather(1, shuffle[:, :keep, None].expand(-1, -1, d))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        latent = enc.norm(enc.blocks(torch.cat([cls, kept], dim=1)))

        x = self.decoder_embed(latent)
        masked = self.mask_token.expand(b, n - keep, -1)
        patches = torch.cat([x[:, 1:], masked], dim=1).gather(1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos
        prediction = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))[:, 1:]

        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        is_masked = torch.ones(b, n, device=images.device)
        is_masked[:, :keep] = 0
        is_masked = is_masked.gather(1, restore)
        per_patch = ((prediction - target) ** 2).mean(-1)
        return (per_patch * is_masked).sum() / is_masked.sum()


def photo_crops(count: int, rng: np.random.Generator) -> torch.Tensor:
    """Random square crops (5-50% of the short side) of scikit-learn's two sample photographs, resized to 32×32."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(img.copy()).permute(2, 0, 1).float() for img in load_sample_images().images]
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.uniform(0.05, 0.5) * min(photo.shape[1:]))
        top = rng.integers(photo.shape[1] - side + 1)
        left = rng.integers(photo.shape[2] - side + 1)
        crop = photo[None, :, top:top + side, left:left + side]
        crops.append(F.interpolate(crop, size=(32, 32), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops).round().clamp(0, 255).to(torch.uint8)


def build_corpus(recipe: MAERecipe) -> tuple[torch.Tensor, dict[str, int]]:
    from bench.tasks import micro

    rng = np.random.default_rng(recipe.seed + 7_000_000)  # a stream no micro task draws from
    shapes = ("square", "ellipse", "triangle")
    sprites, _, _ = micro.render_sprites(recipe.seed + 7_000_001, recipe.corpus_sprites, shapes)
    scenes = np.stack([micro.render_count_scene(rng, int(rng.integers(0, 8))) for _ in range(recipe.corpus_scenes)])
    parts = {
        "digits_held_out": micro.pretraining_pool("digits")[:recipe.corpus_held_out_digits],
        "mnist_held_out": micro.pretraining_pool("mnist")[:recipe.corpus_held_out_digits],
        "sprites": sprites,
        "scenes": torch.from_numpy((scenes * 255 + 0.5).astype(np.uint8)).permute(0, 3, 1, 2).contiguous(),
        "photo_crops": photo_crops(recipe.corpus_photo_crops, rng),
    }
    return torch.cat(list(parts.values())), {name: len(images) for name, images in parts.items()}


EpochLog = Callable[[int, int, float, float], None]


def pretrain_mae(recipe: MAERecipe, on_epoch: EpochLog | None = None) -> tuple[VisionTransformer, dict]:
    """Pre-train the micro encoder; return it and the log (recipe, corpus, per-epoch loss, seconds)."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    corpus, composition = build_corpus(recipe)
    entry = BACKBONES.get("micro-vit")
    encoder = create_vit(entry.timm_name.split(".")[0], dict(num_classes=0, **MICRO_ARCH), recipe.seed)
    model = MaskedAutoencoder(encoder, recipe)
    preprocess = Preprocess(MICRO_ARCH["img_size"], entry.mean, entry.std)

    learnable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in learnable if p.ndim > 1]
    no_decay = [p for p in learnable if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95),
    )
    steps_per_epoch = len(corpus) // recipe.batch_size
    total, warmup = recipe.epochs * steps_per_epoch, min(recipe.warmup_epochs, recipe.epochs - 1) * steps_per_epoch
    schedule = warmup_cosine(optimizer, warmup, total)
    log: dict = {"recipe": asdict(recipe), "corpus": composition, "loss": [], "epoch_seconds": []}
    model.train()
    for epoch in range(recipe.epochs):
        start, running = time.perf_counter(), 0.0
        order = torch.randperm(len(corpus), generator=generator)
        for step in range(steps_per_epoch):
            batch = corpus[order[step * recipe.batch_size:(step + 1) * recipe.batch_size]]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = model(preprocess(batch), generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach())
        log["loss"].append(running / steps_per_epoch)
        log["epoch_seconds"].append(time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch + 1, recipe.epochs, log["loss"][-1], log["epoch_seconds"][-1])
    return encoder, log


def save_encoder(encoder: VisionTransformer, path: Path) -> None:
    """fp16 safetensors: half the size of fp32 and still exact enough for a frozen backbone."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "arch": "micro-vit", "objective": "mae"})
