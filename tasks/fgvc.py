"""FGVC: the five fine-grained classification tasks of VPT (Jia et al., ECCV 2022), as SPT reports them.

Two on-disk layouts are read, detected in this order:
- `fgvc-vpt-json`: `<root>/<dataset>/{train,val,test}.json` mapping an image path to a class id (VPT's release); ids
  are remapped onto 0..K-1 in sorted order; images under the dataset's usual image folder.
- `fgvc-spt-txt`: `<relpath> <label>` text lists such as `cub200_{train,test}.txt`, in the dataset folder or the data
  root (SPT's release); without a val list, 10% of train is held out, class-stratified and seeded.
A dataset folder, its image folder and its lists are found under SPT's names (`Dataset/FGVC.py`), the archives' and the
usual short names, ignoring case, `-` and `_`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torchvision import transforms as T

from bench.data import TASKS, Task, TaskGroup, register_group, register_task
from bench.datafetch import HubFile, ImageArchive, ManualImages, SplitDataset, SplitFilesAndImages, WebFile, \
    register_fetch
from bench.imagefiles import ImageTransforms
from bench.layouts import DataSource, Located, PathLog, image_base, read_json_map, read_txt_list, remap_contiguous
from bench.protocol import PIPELINES

BICUBIC = T.InterpolationMode.BICUBIC
TRANSFORMS = ImageTransforms(
    train=T.Compose([T.RandomResizedCrop(224, interpolation=BICUBIC), T.RandomHorizontalFlip()]),
    eval=T.Compose([T.Resize(256, interpolation=BICUBIC), T.CenterCrop(224)]),
    # The decode cache keeps whole training images at 256×256 for the device-side crop: the eval pipeline's own
    # scale, 196 KB an image (NABirds' 24k train+val images: 4.7 GB). Crops below about (256/224)² of the image are
    # upsampled from fewer pixels than the original file holds; the record's `train_from_cache` says so.
    stored=256,
)
# VPT's FGVC pipelines (KMnP/vpt src/data/transforms.py:20-40), torchvision's default (bilinear) interpolation; the
# `vpt-paper` recipe puts them in place of the family's own, which are SPT's (Dataset/FGVC.py:47-59).
VPT_TRANSFORMS = PIPELINES.register("vpt-fgvc", ImageTransforms(
    train=T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip()]),
    eval=T.Compose([T.Resize(256), T.CenterCrop(224)]),
), "VPT's FGVC pipelines: Resize(256, bilinear)+RandomCrop(224)+flip / Resize(256, bilinear)+CenterCrop(224)")
VAL_FRACTION = 0.1  # VPT's FGVC val splits hold out 10% of the official training set


@dataclass(frozen=True)
class FgvcTask:
    """One FGVC dataset: its names on disk and VPT's split sizes.

    Attributes:
        name, classes, description: the registered task.
        folders: dataset folder names, archive name first.
        image_dirs: where images live inside the dataset folder (besides the folder itself).
        list_prefixes: `<prefix>_{train,val,test}.txt` names of the text-list layout.
        trainval, test: official train+val and test sizes, for `bench data check`.
    """

    name: str
    classes: int
    description: str
    folders: tuple[str, ...]
    image_dirs: tuple[str, ...]
    list_prefixes: tuple[str, ...]
    trainval: int
    test: int


# Folder, image-folder and list names: SPT's own loader (`Dataset/FGVC.py` in SinAxCosB/Self-Prompt-Tuning) first,
# as written there (`Flowes_` is its spelling), then the archives' and other repositories' names.
FGVC = (
    FgvcTask("cub", 200, "CUB-200-2011: 200 bird species", ("CUB_200_2011", "cub", "cub200"), ("images",),
             ("cub200", "cub"), 5994, 5794),
    FgvcTask("nabirds", 555, "NABirds: 555 North American bird categories", ("NABirds",), ("images",),
             ("NABirds",), 23929, 24633),
    FgvcTask("flowers", 102, "Oxford Flowers-102: 102 flower species",
             ("Flowers", "flowers102", "OxfordFlowers", "oxford_flowers102"), ("102flowers/jpg", "jpg"),
             ("Flowes", "Flowers", "flowers102"), 2040, 6149),
    FgvcTask("dogs", 120, "Stanford Dogs: 120 dog breeds", ("Dogs", "StanfordDogs", "stanford_dogs"), ("images",),
             ("Dogs", "StanfordDogs"), 12000, 8580),
    FgvcTask("cars", 196, "Stanford Cars: 196 car models", ("Cars", "StanfordCars", "stanford_cars", "car196"), (),
             ("Cars", "cars196"), 8144, 8041),
)


def find_vpt_json(task: FgvcTask, root: Path, lookup: PathLog) -> Located | None:
    folder = lookup.dir(root, task.folders)
    lists = {split: lookup.file(folder, [f"{split}.json"]) for split in ("train", "val", "test")}
    if folder is None or lists["train"] is None or lists["test"] is None:
        return None
    found = {split: path for split, path in lists.items() if path is not None}
    mappings = {split: read_json_map(path) for split, path in found.items()}
    first = next(iter(mappings["train"]), "")
    splits = remap_contiguous(mappings, image_base(folder, task.image_dirs, first, lookup))
    note = "class ids of the JSON files remapped onto 0..K-1 in sorted order"
    return Located("fgvc-vpt-json", folder, found, splits, [note])


def find_spt_txt(task: FgvcTask, root: Path, lookup: PathLog) -> Located | None:
    folder = lookup.dir(root, task.folders)
    for where in (folder, root):
        train = lookup.file(where, [f"{prefix}_train.txt" for prefix in task.list_prefixes])
        if train is None or folder is None:
            continue
        prefix = train.name[: -len("_train.txt")]
        lists = {"train": train, "val": lookup.file(where, [f"{prefix}_val.txt"]),
                 "test": lookup.file(where, [f"{prefix}_test.txt"])}
        if lists["test"] is None:
            return None
        found = {split: path for split, path in lists.items() if path is not None}
        listed = read_txt_list(train, Path())
        base = image_base(folder, task.image_dirs, str(listed[0][0]) if listed else "", lookup)
        return Located("fgvc-spt-txt", folder, found, {s: read_txt_list(p, base) for s, p in found.items()})
    return None


def _source(task: FgvcTask) -> DataSource:
    return DataSource(
        name=task.name,
        num_classes=task.classes,
        finders=(partial(find_vpt_json, task), partial(find_spt_txt, task)),
        transforms=TRANSFORMS,
        val_fraction=VAL_FRACTION,
        expected={"train+val": task.trainval, "test": task.test},
    )


for _task in FGVC:
    register_task(Task(_task.name, "fgvc", _task.classes, _source(_task), epochs=100), _task.description)

TASKS.alias("fgvc", [t.name for t in FGVC])
register_group(TaskGroup("fgvc", "FGVC", "FGVC"))

# VPT's split files as V-PETL Bench republished them; the images from their official hosts (links from VPT's README),
# with the MD5s those archives are known by. Cars and NABirds need a login or an agreement: fetched by hand.
IMAGES = {
    "cub": ImageArchive(WebFile("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                                "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78"),
                        "CUB_200_2011/images", "images"),
    "nabirds": ManualImages("http://info.allaboutbirds.org/nabirds/", "agreeing to the Cornell Lab's terms of use",
                            "images"),
    "flowers": ImageArchive(WebFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                                    "102flowers.tgz", "52808999861908f626f3c1f4e79d11fa"), "jpg", "jpg"),
    "dogs": ImageArchive(WebFile("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar", "images.tar",
                                 "1bb1f2a596ae7057f99d7d75860002ef"), "Images", "Images"),
    "cars": ManualImages("https://ai.stanford.edu/~jkrause/cars/car_dataset.html", "a login or an agreement with "
                         "their host"),
}
register_fetch("fgvc", SplitFilesAndImages(HubFile("XiN0919/FGVC", "json.zip"),
                                           {t.name: SplitDataset(t.folders, t.classes, IMAGES[t.name]) for t in FGVC}),
               "FGVC: VPT's split files from the Hugging Face hub, CUB/Flowers/Dogs images from their hosts")
