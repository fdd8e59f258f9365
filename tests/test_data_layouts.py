"""FGVC and VTAB-1k loaders against tiny copies of every supported on-disk layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import data_fixtures as fx
import pytest
import torch

import bench.tasks  # noqa: F401  (registers the tasks)
from bench import BenchError
from bench.data import TASKS
from bench.imagefiles import FileSplit
from bench.layouts import stratified_holdout


def _labels(split: FileSplit) -> Counter:
    return Counter(split.labels)


def test_aliases_name_the_paper_tasks_and_micro_stays_micro() -> None:
    assert TASKS.resolve("fgvc") == ["cub", "nabirds", "flowers", "dogs", "cars"]
    assert len(TASKS.resolve("vtab")) == 19
    groups = {g: len(TASKS.resolve(f"vtab-{g}")) for g in ("natural", "specialized", "structured")}
    assert groups == {"natural": 7, "specialized": 4, "structured": 8}
    assert TASKS.get("dsprites-loc").num_classes == 16 and TASKS.get("dsprites-loc").group == "vtab/structured"
    assert TASKS.resolve("micro") == ["digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count"]


def test_fgvc_vpt_json_layout_remaps_ids_and_records_transforms(tmp_path: Path) -> None:
    fx.fgvc_vpt_json(tmp_path)
    data = TASKS.get("cub").load(tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 6)
    assert sorted(_labels(data.train)) == [0, 1, 2]  # JSON ids 1..3
    assert data.info["layout"] == "fgvc-vpt-json"
    assert any("remapped" in note for note in data.info["notes"])
    assert "RandomResizedCrop" in data.info["transforms"]["train"][0]
    assert "CenterCrop" in data.info["transforms"]["eval"][-1]
    images, labels = next(data.test.batches(4))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 224, 224) and labels.dtype == torch.int64


@pytest.mark.parametrize(
    "task, folder, image_dir",
    [("cub", "cub", "images"), ("nabirds", "NABirds", "images"), ("flowers", "OxfordFlowers", ""),
     ("dogs", "stanford_dogs", "Images"), ("cars", "StanfordCars", "")],
)
def test_fgvc_folders_are_found_under_their_usual_names(tmp_path: Path, task: str, folder: str, image_dir: str) -> None:
    fx.fgvc_vpt_json(tmp_path, folder=folder, image_dir=image_dir, sizes={"train": 1, "val": 1, "test": 1})
    data = TASKS.get(task).load(tmp_path)
    assert data.info["folder"] == str(tmp_path / folder) and len(data.test) == 3


def test_fgvc_spt_txt_layout_derives_a_stratified_seeded_val(tmp_path: Path) -> None:
    fx.fgvc_spt_txt(tmp_path, folder="StanfordDogs", classes=3, train_per_class=10)
    first, again = TASKS.get("dogs").load(tmp_path), TASKS.get("dogs").load(tmp_path)
    assert first.info["layout"] == "fgvc-spt-txt"
    assert (len(first.train), len(first.val)) == (27, 3)
    assert _labels(first.val) == Counter({0: 1, 1: 1, 2: 1})
    assert first.val.items == again.val.items
    assert any("val derived from train" in note and "seed" in note for note in first.info["notes"])
    assert not {p for p, _ in first.val.items} & {p for p, _ in first.train.items}


def test_fgvc_spt_lists_beside_the_dataset_folder(tmp_path: Path) -> None:
    fx.fgvc_spt_txt(tmp_path, folder="CUB_200_2011", image_dir="images", prefix="cub200", lists_at_root=True)
    data = TASKS.get("cub").load(tmp_path)
    assert data.info["lists"]["train"] == str(tmp_path / "cub200_train.txt")
    assert next(data.train.batches(2))[0].shape == (2, 3, 224, 224)


@pytest.mark.parametrize("task", list(fx.SPT_RELEASE))
def test_fgvc_spt_reference_layout_loads_every_listed_image_from_its_folder(tmp_path: Path, task: str) -> None:
    images = fx.fgvc_spt_release(tmp_path, task)
    _, train_list, test_list = fx.SPT_RELEASE[task]
    data = TASKS.get(task).load(tmp_path)
    assert data.info["layout"] == "fgvc-spt-txt"
    assert data.info["lists"]["train"] == str(tmp_path / train_list)
    assert data.info["lists"]["test"] == str(tmp_path / test_list)
    assert {path.parent.parent for path, _ in data.test.items} == {images}
    assert (len(data.train) + len(data.val), len(data.test)) == (30, 6)


def test_image_folders_match_whatever_their_case(tmp_path: Path) -> None:
    fx.fgvc_spt_txt(tmp_path, folder="dogs", image_dir="IMAGES")
    assert TASKS.get("dogs").load(tmp_path).test.items[0][0].parent.parent == tmp_path / "dogs" / "IMAGES"


def test_vtab_noah_layout_under_a_renamed_folder(tmp_path: Path) -> None:
    fx.vtab_noah(tmp_path, folder="oxford_pet")
    data = TASKS.get("pets").load(tmp_path)
    assert data.info["layout"] == "vtab-noah" and data.info["notes"] == []
    assert (len(data.train), len(data.val), len(data.test)) == (18, 9, 18)
    assert data.info["split_sizes"]["trainval"] == 27
    assert data.info["transforms"]["train"] == data.info["transforms"]["eval"]  # VTAB does not augment
    images, _ = next(data.train.batches(5, torch.Generator().manual_seed(0)))
    assert images.shape == (5, 3, 224, 224)
    drawn = list(data.train.image_batches(torch.tensor([3, 0, 3, 1]), 3))
    assert [tuple(b.shape) for b in drawn] == [(3, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.equal(drawn[0][0], drawn[0][2]), "an index drawn twice gives the same image twice"


def test_vtab_spt_layout_derives_val_from_train800val200(tmp_path: Path) -> None:
    fx.vtab_spt(tmp_path, group="Specialized", folder="Patch_Camelyon", classes=2, trainval=30)
    data = TASKS.get("camelyon").load(tmp_path)
    assert data.info["layout"] == "vtab-spt"
    assert (len(data.train), len(data.val)) == (24, 6) and _labels(data.val) == {0: 3, 1: 3}
    assert any("val derived from trainval" in note for note in data.info["notes"])


def test_noah_and_spt_vtab_folders_side_by_side_both_load(tmp_path: Path) -> None:
    fx.vtab_noah(tmp_path, folder="dtd")
    fx.vtab_spt(tmp_path, group="Natural", folder="Oxford_IIIT_Pet")
    assert TASKS.get("dtd").load(tmp_path).info["layout"] == "vtab-noah"
    assert TASKS.get("pets").load(tmp_path).info["layout"] == "vtab-spt"


def test_stratified_holdout_gives_vtab_its_800_200_split() -> None:
    items = [(Path(f"{i}.jpg"), label) for i, label in enumerate([0] * 500 + [1] * 300 + [2] * 150 + [3] * 50)]
    train, val = stratified_holdout(items, 200, seed=0)
    assert (len(train), len(val)) == (800, 200)
    assert Counter(label for _, label in val) == Counter({0: 100, 1: 60, 2: 30, 3: 10})
    assert stratified_holdout(items, 200, seed=0) == (train, val)
    assert stratified_holdout(items, 200, seed=1) != (train, val)
    assert sorted(train + val) == sorted(items)


def test_augmentation_is_seeded_by_the_generator_not_the_workers(tmp_path: Path) -> None:
    fx.fgvc_vpt_json(tmp_path, sizes={"train": 2, "val": 1, "test": 1})
    split = TASKS.get("cub").load(tmp_path).train
    inline = FileSplit(split.items, split.transforms, workers=0)
    workers = FileSplit(split.items, split.transforms, workers=2)

    def epoch(s: FileSplit, seed: int) -> list[torch.Tensor]:
        batches = s.batches(3, torch.Generator().manual_seed(seed))
        return [torch.cat([x.flatten().float(), y.float()]) for x, y in batches]

    assert all(torch.equal(a, b) for a, b in zip(epoch(inline, 0), epoch(workers, 0)))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(inline, 0), epoch(inline, 1)))
    evaluated = [next(inline.batches(6))[0] for _ in range(2)]
    assert torch.equal(*evaluated)  # unshuffled passes use the deterministic eval pipeline


def test_out_of_range_label_refuses_to_load(tmp_path: Path) -> None:
    task = fx.vtab_noah(tmp_path, folder="kitti", classes=3)
    fx.write_list(task / "test.txt", [("images/test/000000.jpg", 9)])
    with pytest.raises(BenchError, match=r"test: 1 label\(s\) outside 0..3 .*bench data check"):
        TASKS.get("kitti-dist").load(tmp_path)


def test_real_task_without_a_data_root_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DATA", raising=False)
    with pytest.raises(BenchError, match="pass --data-root DIR or set BENCH_DATA"):
        TASKS.get("cub").load(None)


def test_bench_data_env_is_the_fallback_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fx.fgvc_vpt_json(tmp_path, sizes={"train": 1, "val": 1, "test": 1})
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    assert TASKS.get("cub").load(None).info["data_root"] == str(tmp_path)


def test_missing_task_names_every_file_and_folder_tried(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as caught:
        TASKS.get("cub").load(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for expected in ("{CUB_200_2011,cub,cub200}/train.json", "{CUB_200_2011,cub,cub200}/test.json",
                     f"{tmp_path}/{{cub200_train.txt,cub_train.txt}}"):
        assert expected in message
    with pytest.raises(BenchError, match=r"VTAB-1k|vtab-1k,vtab\}/Specialized/\{patch_camelyon,camelyon\}/test.txt"):
        TASKS.get("camelyon").load(tmp_path)
