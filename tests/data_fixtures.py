"""Tiny copies of the real FGVC and VTAB-1k on-disk layouts, with real JPEG/PNG files, for the data tests.

Every image gets its own colour and size (derived from its path), so no two files share bytes unless a test makes
them: the duplicate check must only fire when a fixture plants a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image


def write_image(path: Path) -> Path:
    """A small real image whose colour and size follow from its path; PNG or JPEG by suffix."""
    seed = hashlib.sha1(path.as_posix().encode()).digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (24 + seed[0] % 24, 20 + seed[1] % 24), tuple(seed[2:5]))
    image.putpixel((0, 0), tuple(seed[5:8]))
    image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return path


def _images(base: Path, relpaths: list[str]) -> None:
    for rel in relpaths:
        write_image(base / rel)


def fgvc_vpt_json(
    root: Path, folder: str = "CUB_200_2011", image_dir: str = "images", classes: int = 3,
    sizes: dict[str, int] | None = None,
) -> Path:
    """VPT's layout: `<folder>/{train,val,test}.json` mapping paths (under `image_dir`) to 1-based class ids."""
    sizes = sizes or {"train": 4, "val": 1, "test": 2}
    dataset = root / folder
    base = dataset / image_dir if image_dir else dataset
    for split, per_class in sizes.items():
        mapping = {f"{c:03d}.class/{split}_{i}.jpg": c for c in range(1, classes + 1) for i in range(per_class)}
        _images(base, list(mapping))
        (dataset / f"{split}.json").write_text(json.dumps(mapping))
    return dataset


def fgvc_spt_txt(
    root: Path, folder: str = "Dogs", image_dir: str = "Images", prefix: str = "Dogs", classes: int = 3,
    train_per_class: int = 10, test_per_class: int = 2, lists_at_root: bool = False,
) -> Path:
    """SPT's layout: `<prefix>_{train,test}.txt` lists of `<relpath> <label>` (0-based), no val list."""
    dataset = root / folder
    base = dataset / image_dir if image_dir else dataset
    where = root if lists_at_root else dataset
    where.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        lines = [(f"class_{c}/{split}_{i}.png", c) for c in range(classes) for i in range(per_class)]
        _images(base, [rel for rel, _ in lines])
        write_list(where / f"{prefix}_{split}.txt", lines)
    return dataset


# SPT's own FGVC loader (`Dataset/FGVC.py` in SinAxCosB/Self-Prompt-Tuning), relative to its `./Dataset/`: the image
# folder its `root_dir` names and its train/test lists, exactly as spelled there.
SPT_RELEASE = {
    "cub": ("CUB_200_2011/images", "cub200_train.txt", "cub200_test.txt"),
    "dogs": ("Dogs/images", "Dogs/Dogs_train.txt", "Dogs/Dogs_test.txt"),
    "cars": ("Cars", "Cars/Cars_train.txt", "Cars/Cars_test.txt"),
    "flowers": ("Flowers/102flowers/jpg", "Flowers/Flowes_train.txt", "Flowers/Flowes_test.txt"),
    "nabirds": ("NABirds/images", "NABirds/NABirds_train.txt", "NABirds/NABirds_test.txt"),
}


def fgvc_spt_release(root: Path, task: str, classes: int = 3, train_per_class: int = 10) -> Path:
    """SPT's layout for `task` exactly as its loader reads it; returns the image folder."""
    image_dir, train, test = SPT_RELEASE[task]
    for name, per_class in ((train, train_per_class), (test, 2)):
        split = name.rsplit("_", 1)[1].removesuffix(".txt")
        lines = [(f"{c:03d}.class/{split}_{i}.jpg", c) for c in range(classes) for i in range(per_class)]
        _images(root / image_dir, [rel for rel, _ in lines])
        write_list(root / name, lines)
    return root / image_dir


def vtab_noah(root: Path, folder: str = "oxford_iiit_pet", classes: int = 3, per_class: int = 3) -> Path:
    """The NOAH/SSF dump: `vtab-1k/<folder>/{train800,val200,train800val200,test}.txt`, paths under `images/`."""
    task = root / "vtab-1k" / folder
    counts = {"train800": 2 * per_class * classes, "val200": per_class * classes, "test": 2 * per_class * classes}
    lists = {}
    for split, count in counts.items():
        image_split = "train800" if split == "val200" else split  # NOAH keeps val images beside train's
        offset = 1000 if split == "val200" else 0
        lists[split] = [(f"images/{image_split}/{offset + i:06d}.jpg", i % classes) for i in range(count)]
        _images(task, [rel for rel, _ in lists[split]])
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        write_list(task / f"{split}.txt", lines)
    return task


def vtab_spt(
    root: Path, group: str = "Natural", folder: str = "Oxford_IIIT_Pet", classes: int = 3, trainval: int = 30,
    test: int = 6,
) -> Path:
    """SPT's release: `VTAB-1K/<Group>/<Name>/{train800val200,test}.txt` only."""
    task = root / "VTAB-1K" / group / folder
    for split, count in (("train800val200", trainval), ("test", test)):
        lines = [(f"images/{split}/{i:06d}.jpg", i % classes) for i in range(count)]
        _images(task, [rel for rel, _ in lines])
        write_list(task / f"{split}.txt", lines)
    return task


def write_list(path: Path, lines: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{rel} {label}\n" for rel, label in lines))
