"""Decode once, augment on the device: the cached paths against the file path they replace.

The file path (PIL, one image at a time, torchvision's transforms under a per-image seed) is the oracle: evaluation
from the cache must give its pixels exactly, and the device-side crop must draw its boxes and flips and, within
interpolation error, its crops.
"""

from __future__ import annotations

import os
from pathlib import Path

import data_fixtures as fx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from bench import engine
from bench.augment import CropFlip
from bench.backbone import LoadedBackbones, load_backbone
from bench.decoded import LIMIT_ENV, DataPath, DecodeCache
from bench.engine import Caches
from bench.imagefiles import FileSplit
from bench.recipes import make_spec
from bench.scheduler import claim_gpu
from bench.tasks.fgvc import TRANSFORMS


@pytest.fixture
def data_path(tmp_path: Path) -> DataPath:
    """A run's way to a decode cache in a fresh folder, as `bench run` gives each run one."""
    return DataPath(DecodeCache(tmp_path / "decoded"))


def smooth_image(path: Path, width: int, height: int, seed: int) -> Path:
    """A lossless image of low-frequency colour waves: resampling it differs between filters by interpolation
    error alone, not by aliasing of detail no filter can keep."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    channels = [127.5 + 100 * np.sin(2 * np.pi * (x / (40 + 9 * c) + y / (55 - 7 * c)) + phase[c]) for c in range(3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.stack(channels, -1).round().astype(np.uint8)).save(path)
    return path


def file_batches(split: FileSplit, seed: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return list(split.batches(4, generator))


def test_device_crop_draws_the_file_paths_boxes_and_flips_for_the_same_seed(tmp_path: Path) -> None:
    crop = CropFlip.of(TRANSFORMS.train)
    assert crop == CropFlip(224, (0.08, 1.0), (3 / 4, 4 / 3), "bicubic", 0.5)
    # Extreme aspect ratios make RandomResizedCrop's ten tries fail and take its central-crop fallback.
    sizes = [(37, 41), (300, 200), (500, 375), (20, 400), (400, 20)]
    seeds = torch.randint(0, 2**62, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    flips = 0
    for width, height in sizes:
        image = Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8))
        boxes = crop.draw(seeds, np.array([[height, width]] * len(seeds)))
        for seed, (top, left, h, w, flip) in zip(seeds, boxes.int().tolist()):
            torch.manual_seed(seed)  # what the file path's worker does before the transform
            expected = TF.pil_to_tensor(TRANSFORMS.train(image))
            again = TF.resized_crop(image, top, left, h, w, [224, 224], InterpolationMode.BICUBIC)
            again = TF.pil_to_tensor(TF.hflip(again) if flip else again)
            assert torch.equal(expected, again), (width, height, seed)
            flips += flip
    assert 0.3 < flips / (len(sizes) * len(seeds)) < 0.7


def test_drawing_boxes_leaves_the_callers_random_stream_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    CropFlip.of(TRANSFORMS.train).draw([1, 2, 3], np.array([[64, 64]] * 3))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("width,height,mean_limit", [(256, 256, 0.75), (300, 210, 1.0)])
def test_device_crops_match_the_file_paths_crops_within_interpolation_error(
    tmp_path: Path, data_path: DataPath, width: int, height: int, mean_limit: float
) -> None:
    """At 256×256 the cache stores the file's own pixels, so the two paths differ only by their bicubic kernels
    (PIL's a = -0.5, torch's a = -0.75); other sizes add the cache's resize to 256×256."""
    items = [(smooth_image(tmp_path / f"img{i}.png", width, height, seed=i), i % 3) for i in range(8)]
    from_files = file_batches(FileSplit(items, TRANSFORMS, workers=0), seed=3)
    from_cache = file_batches(FileSplit(items, TRANSFORMS, workers=0, data_path=data_path), seed=3)
    assert [e["status"] for e in data_path.events] == ["built"]
    for (a, labels_a), (b, labels_b) in zip(from_files, from_cache):
        assert torch.equal(labels_a, labels_b), "same order"
        difference = (a.float() - b.float()).abs()
        assert difference.mean() < mean_limit
        # A flip or a box drawn differently would put unrelated pixels side by side: errors of ~100 levels.
        assert difference.flatten(1).mean(1).max() < 2 * mean_limit


def test_evaluation_from_the_cache_equals_evaluation_from_the_files(tmp_path: Path) -> None:
    fx.fgvc_vpt_json(tmp_path / "data", sizes={"train": 3, "val": 2, "test": 2})
    spec = make_spec("linear", "cub", "micro-vit", 0, {"epochs": 2}, stage="final")
    from_files = engine.run(spec, data_root=tmp_path / "data")
    assert from_files.data_path == [], "a run given no caches decodes its files"
    caches = Caches(decoded=DecodeCache(tmp_path / "decoded"))
    from_cache = engine.run(spec, data_root=tmp_path / "data", caches=caches)
    # The linear probe reads only unshuffled passes: train+val features, then test. Same pixels, same record.
    assert from_cache.curves == from_files.curves and from_cache.metrics == from_files.metrics
    statuses = sorted((e["images"], e["status"]) for e in from_cache.data_path)
    assert statuses == [(6, "built"), (6, "built"), (9, "built")], "train, val and test, each decoded once"
    first = next(e for e in from_cache.data_path if e["status"] == "built")
    assert first["first_pass"]["seconds"] > 0 and first["first_pass"]["images_per_s"] > 0

    caches.features.clear()  # this run extracts its features again, from the decode cache
    again = engine.run(spec, data_root=tmp_path / "data", caches=caches)
    assert {e["status"] for e in again.data_path} == {"read"}, "a later run builds nothing"
    assert again.metrics == from_files.metrics


def test_train_plus_val_reads_the_entries_of_train_and_val(tmp_path: Path, data_path: DataPath) -> None:
    train = FileSplit([(fx.write_image(tmp_path / f"t{i}.jpg"), i) for i in range(5)], TRANSFORMS, workers=0)
    val = FileSplit([(fx.write_image(tmp_path / f"v{i}.jpg"), i) for i in range(3)], TRANSFORMS, workers=0)
    merged = train.with_data_path(data_path).merged_with(val.with_data_path(data_path))
    expected = FileSplit(train.items + val.items, TRANSFORMS, workers=0)
    plain = [file_batches(expected, seed) for seed in (None, 1)]
    directory = data_path.cache.directory
    assert [torch.equal(a[0], b[0]) for a, b in zip(plain[0], file_batches(merged, None))] == [True, True]
    shuffled = file_batches(merged, 1)
    assert [torch.equal(a[1], b[1]) for a, b in zip(plain[1], shuffled)] == [True, True], "same order, same labels"
    assert len(list(directory.glob("*/images.npy"))) == 4, "train and val, eval and stored; never train+val"
    index = torch.tensor([7, 0, 7, 4])
    assert torch.equal(next(merged.image_batches(index, 4)), next(expected.image_batches(index, 4)))


def test_an_entry_is_built_once_and_again_when_a_file_changes(tmp_path: Path) -> None:
    paths = [fx.write_image(tmp_path / f"img{i}.jpg") for i in range(3)]
    steps = ["eval"]
    first = DataPath(DecodeCache(tmp_path / "cache"))
    entry = first.get(paths, TRANSFORMS.eval, steps, workers=0)
    other_process = DataPath(DecodeCache(tmp_path / "cache"))
    assert np.array_equal(other_process.get(paths, TRANSFORMS.eval, steps, workers=0).images, entry.images)
    assert [e["status"] for e in first.events + other_process.events] == ["built", "read"]
    assert entry.sizes.tolist() == [list(Image.open(p).size[::-1]) for p in paths]

    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rewritten = DataPath(other_process.cache)
    rewritten.get(paths, TRANSFORMS.eval, steps, workers=0)
    assert [e["status"] for e in rewritten.events] == ["built"], "a rewritten file is a new entry"
    other_steps = DataPath(other_process.cache)
    other_steps.get(paths, TRANSFORMS.eval, ["other steps"], workers=0)
    assert [e["status"] for e in other_steps.events] == ["built"], "another pipeline is a new entry"


def test_a_split_past_the_cache_bound_decodes_its_files_and_its_record_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    items = [(fx.write_image(tmp_path / f"img{i}.jpg"), 0) for i in range(4)]
    cache = DecodeCache(tmp_path / "decoded")
    monkeypatch.setenv(LIMIT_ENV, str(3 * 224 * 224 * 3 / 2**30))  # room for three eval images, not four
    refused = DataPath(cache)
    batches = file_batches(FileSplit(items, TRANSFORMS, workers=0, data_path=refused), None)
    (event,) = refused.events
    assert event["status"].startswith("over limit") and event["needed_bytes"] == 4 * 224 * 224 * 3
    assert LIMIT_ENV in capsys.readouterr().err
    assert not list(cache.directory.glob("*/images.npy"))
    monkeypatch.delenv(LIMIT_ENV)
    cached = DataPath(cache)
    from_cache = file_batches(FileSplit(items, TRANSFORMS, data_path=cached), None)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, from_cache))
    assert [e["status"] for e in cached.events] == ["built"], "within the default bound it is cached"
    monkeypatch.setenv(LIMIT_ENV, "0")
    off = DataPath(cache)
    file_batches(FileSplit(items, TRANSFORMS, workers=0, data_path=off), None)
    assert off.events == [], "0: the cache is off, not even read"


def test_a_worker_loads_a_backbone_once_and_every_run_gets_an_unmodified_copy(tiny_registered) -> None:
    backbone, task = tiny_registered
    caches = Caches()
    spec = make_spec("full", task, backbone, 0, {"epochs": 1, "lr": 0.01})
    first, second = engine.run(spec, caches=caches), engine.run(spec, caches=caches)
    assert caches.backbones.loads == 1
    # Full fine-tuning trains every backbone weight; had it trained the held copy, the second run would differ.
    assert first.curves == second.curves and first.metrics == second.metrics
    held = caches.backbones.get(backbone)
    fresh = load_backbone(backbone)
    assert all(torch.equal(a, b) for a, b in zip(held.model.state_dict().values(), fresh.model.state_dict().values()))


def test_a_replaced_checkpoint_file_is_loaded_again(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "micro.safetensors"
    save_file(load_backbone("micro-vit").model.state_dict(), str(weights))
    loaded = LoadedBackbones()
    loaded.get("micro-vit", weights)
    loaded.get("micro-vit", weights)
    assert loaded.loads == 1
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    loaded.get("micro-vit", weights)
    assert loaded.loads == 2


def test_workers_spread_over_the_gpus_and_share_one_when_there_are_more_jobs(tmp_path: Path) -> None:
    held = [claim_gpu(tmp_path / "two", gpus=2, jobs=4) for _ in range(4)]
    assert [device for _, device in held] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert claim_gpu(tmp_path / "two", gpus=2, jobs=4) is None, "every slot is held"
    one = [claim_gpu(tmp_path / "one", gpus=1, jobs=4) for _ in range(4)]
    assert [device for _, device in one] == ["cuda:0"] * 4, "--jobs 4 on one GPU: four runs side by side on it"
    held[1][0].release()
    assert claim_gpu(tmp_path / "two", gpus=2, jobs=4)[1] == "cuda:1", "a worker that exits frees its slot"


def test_a_prompted_fgvc_run_trains_on_device_side_crops_of_the_cached_images(tmp_path: Path) -> None:
    fx.fgvc_vpt_json(tmp_path / "data", sizes={"train": 3, "val": 1, "test": 1})
    # The harness's own FGVC pipeline (random resized crop), which the device-side crop reproduces; vpt-paper's
    # Resize(256)+RandomCrop(224) reads its files instead.
    spec = make_spec("vpt-deep", "cub", "micro-vit", 0, {"epochs": 2}, recipe="none")
    record = engine.run(spec, data_root=tmp_path / "data", caches=Caches.for_results(tmp_path / "results"))
    assert record.status == "done" and len(record.curves["train_loss"]) == 2
    (stored,) = [e for e in record.data_path if "(256, 256)" in e["steps"][0]]
    assert stored["status"] == "built" and stored["images"] == 9
    assert "grid_sample" in " ".join(record.task.data["transforms"]["train_from_cache"])


def test_a_bound_that_is_not_a_number_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import BenchError

    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(BenchError, match=f"{LIMIT_ENV}='lots' is not a number.*GiB"):
        DataPath(DecodeCache(tmp_path)).get([fx.write_image(tmp_path / "a.jpg")], TRANSFORMS.eval, ["eval"], workers=0)
