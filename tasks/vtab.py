"""VTAB-1k (Zhai et al., 2019): 19 tasks of 1,000 training images each, in three groups, as VPT and SPT report them.

Two on-disk layouts are read, detected in this order; list lines are `<relpath> <label>`, relative to the task folder:
- `vtab-noah`: `<root>/vtab-1k/<task>/{train800,val200,train800val200,test}.txt` (the NOAH/SSF dump).
- `vtab-spt`: `<root>/VTAB-1K/{Natural,Specialized,Structured}/<Task>/{train800val200,test}.txt` (SPT's release);
  without train800/val200 lists, 200 of train800val200 are held out as val, class-stratified and seeded.
Folder names are matched ignoring case, `-` and `_`, so `Patch_Camelyon` and `patch_camelyon` are one name.
Images are resized to 224×224 (bicubic) without augmentation, so decoded train and val images are cached in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torchvision import transforms as T

from bench.data import TASKS, Task, TaskGroup, register_group, register_task
from bench.datafetch import HubFile, TaskFolderArchive, register_fetch
from bench.imagefiles import ImageTransforms
from bench.protocol import PIPELINES
from bench.layouts import DataSource, Located, PathLog, read_txt_list

TRANSFORMS = ImageTransforms(eval=T.Compose([T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC)]))
# SPT's VTAB pipeline (SinAxCosB/Self-Prompt-Tuning Dataset/VTAB.py, all 19 tasks, train and test alike): the
# shorter side to 224, then the centre square, so wide images (KITTI, CLEVR) lose their sides.
SPT_TRANSFORMS = PIPELINES.register("spt-vtab", ImageTransforms(
    eval=T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)]),
), "SPT's VTAB pipeline: Resize(224, bicubic) of the shorter side, then CenterCrop(224)")
VTAB_FOLDERS = ("vtab-1k", "vtab")
LISTS = {"train800.txt": "train", "val200.txt": "val", "train800val200.txt": "trainval", "test.txt": "test"}
GROUP_FOLDERS = {"natural": "Natural", "specialized": "Specialized", "structured": "Structured"}


@dataclass(frozen=True)
class VtabTask:
    """One VTAB-1k task.

    Attributes:
        name, classes, group, description: the registered task (group is natural, specialized or structured).
        folders: folder names in the NOAH/SSF dump first, then the renamings other releases use.
        test: the official test size, for `bench data check`.
    """

    name: str
    classes: int
    group: str
    description: str
    folders: tuple[str, ...]
    test: int


VTAB = (
    VtabTask("cifar100", 100, "natural", "CIFAR-100", ("cifar", "cifar100"), 10000),
    VtabTask("caltech101", 102, "natural", "Caltech-101 objects", ("caltech101",), 6084),
    VtabTask("dtd", 47, "natural", "Describable Textures", ("dtd",), 1880),
    VtabTask("flowers102", 102, "natural", "Oxford Flowers-102", ("oxford_flowers102", "flowers102"), 6149),
    VtabTask("pets", 37, "natural", "Oxford-IIIT Pets", ("oxford_iiit_pet", "oxford_pet", "pets"), 3669),
    VtabTask("svhn", 10, "natural", "SVHN house numbers", ("svhn",), 26032),
    VtabTask("sun397", 397, "natural", "SUN397 scenes", ("sun397",), 21750),
    VtabTask("camelyon", 2, "specialized", "PatchCamelyon histopathology", ("patch_camelyon", "camelyon"), 32768),
    VtabTask("eurosat", 10, "specialized", "EuroSAT satellite land use", ("eurosat",), 5400),
    VtabTask("resisc45", 45, "specialized", "RESISC45 remote-sensing scenes", ("resisc45",), 6300),
    VtabTask("retinopathy", 5, "specialized", "Diabetic retinopathy grades",
             ("diabetic_retinopathy", "retinopathy"), 42670),
    VtabTask("clevr-count", 8, "structured", "CLEVR object count", ("clevr_count",), 15000),
    VtabTask("clevr-dist", 6, "structured", "CLEVR closest-object distance", ("clevr_dist",), 15000),
    VtabTask("dmlab", 6, "structured", "DeepMind Lab distance", ("dmlab",), 22735),
    VtabTask("kitti-dist", 4, "structured", "KITTI closest-vehicle distance", ("kitti", "kitti_dist"), 711),
    VtabTask("dsprites-loc", 16, "structured", "dSprites x position", ("dsprites_loc",), 73728),
    VtabTask("dsprites-ori", 16, "structured", "dSprites orientation", ("dsprites_ori",), 73728),
    VtabTask("smallnorb-azi", 18, "structured", "SmallNORB azimuth", ("smallnorb_azi",), 12150),
    VtabTask("smallnorb-ele", 9, "structured", "SmallNORB elevation", ("smallnorb_ele",), 12150),
)


def _read_lists(layout: str, folder: Path | None, lookup: PathLog) -> Located | None:
    """The task folder's lists; usable when test and a training pool (train800 + val200, or train800val200) exist."""
    lists = {split: path for name, split in LISTS.items() if (path := lookup.file(folder, [name])) is not None}
    has_pool = "trainval" in lists or {"train", "val"} <= set(lists)
    if folder is None or "test" not in lists or not has_pool:
        return None
    return Located(layout, folder, lists, {split: read_txt_list(path, folder) for split, path in lists.items()})


def _find_under_vtab(layout: str, group: str | None, task: VtabTask, root: Path, lookup: PathLog) -> Located | None:
    """The task folder under each VTAB folder of the root (optionally inside its group folder) that has lists."""
    for vtab in lookup.dirs(root, VTAB_FOLDERS) or [None]:
        parent = lookup.dir(vtab, [group]) if group else vtab
        found = _read_lists(layout, lookup.dir(parent, task.folders), lookup)
        if found is not None:
            return found
    return None


def find_noah(task: VtabTask, root: Path, lookup: PathLog) -> Located | None:
    return _find_under_vtab("vtab-noah", None, task, root, lookup)


def find_spt(task: VtabTask, root: Path, lookup: PathLog) -> Located | None:
    return _find_under_vtab("vtab-spt", GROUP_FOLDERS[task.group], task, root, lookup)


def _source(task: VtabTask) -> DataSource:
    return DataSource(
        name=task.name,
        num_classes=task.classes,
        finders=(partial(find_noah, task), partial(find_spt, task)),
        transforms=TRANSFORMS,
        val_fraction=0.2,  # train800val200 -> 800 / 200
        expected={"train": 800, "val": 200, "test": task.test},
        cache_train=True,
    )


for _task in VTAB:
    register_task(
        Task(_task.name, f"vtab/{_task.group}", _task.classes, _source(_task), epochs=100),
        f"VTAB-1k {_task.group}: {_task.description} ({_task.classes} classes)",
    )

TASKS.alias("vtab", [t.name for t in VTAB])
for _group, _label in GROUP_FOLDERS.items():
    TASKS.alias(f"vtab-{_group}", [t.name for t in VTAB if t.group == _group])
    register_group(TaskGroup(f"vtab/{_group}", _label, "VTAB-1k"))

# V-PETL Bench's processed VTAB-1k (the NOAH dump, `vtab-1k/<task>/`), as its README points to it.
register_fetch("vtab-1k", TaskFolderArchive(HubFile("XiN0919/VTAB-1k", "vtab-1k.zip"), "vtab-1k",
                                            {t.name: t.folders for t in VTAB}),
               "VTAB-1k's 19 tasks: V-PETL Bench's NOAH-layout dump on the Hugging Face hub (4.7 GB)")
