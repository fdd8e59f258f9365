"""`bench data check`: every finding, planted in a tiny fixture, and the command's exit status."""

from __future__ import annotations

import shutil
from pathlib import Path

import data_fixtures as fx
import pytest

import bench.tasks  # noqa: F401  (registers the tasks)
from bench.cli import main
from bench.datacheck import ERROR, NOTE, WARNING, TaskCheck, check_tasks


def _check(task: str, root: Path) -> TaskCheck:
    return check_tasks([task], root)[0]


def _texts(check: TaskCheck, level: str) -> list[str]:
    return [f.text for f in check.findings if f.level == level]


def test_healthy_vtab_task_is_usable_with_size_warnings_against_the_reference(tmp_path: Path) -> None:
    fx.vtab_noah(tmp_path, folder="kitti", classes=4, per_class=2)
    check = _check("kitti-dist", tmp_path)
    assert check.usable and check.layout == "vtab-noah"
    assert check.sizes == {"train": 16, "val": 8, "trainval": 24, "test": 16}
    assert _texts(check, WARNING) == ["train has 16 images, expected 800", "val has 8 images, expected 200",
                                      "test has 16 images, expected 711"]
    assert _texts(check, ERROR) == []


def test_derived_split_is_reported_as_a_note(tmp_path: Path) -> None:
    fx.fgvc_spt_txt(tmp_path, folder="Dogs")
    check = _check("dogs", tmp_path)
    assert check.usable and any("val derived from train" in t for t in _texts(check, NOTE))
    assert "train+val has 30 images, expected 12000" in _texts(check, WARNING)


def test_spt_reference_dogs_layout_is_found_and_usable(tmp_path: Path) -> None:
    fx.fgvc_spt_release(tmp_path, "dogs")
    check = _check("dogs", tmp_path)
    assert check.usable and check.layout == "fgvc-spt-txt" and check.folder == str(tmp_path / "Dogs")
    assert _texts(check, ERROR) == []


def test_corrupt_truncated_and_missing_images_are_listed_not_raised(tmp_path: Path) -> None:
    dataset = fx.fgvc_vpt_json(tmp_path)
    (dataset / "images/001.class/train_0.jpg").write_bytes(b"not an image at all")
    truncated = dataset / "images/002.class/train_0.jpg"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (dataset / "images/003.class/test_1.jpg").unlink()
    check = _check("cub", tmp_path)
    assert not check.usable
    errors = " | ".join(_texts(check, ERROR))
    assert "2 unreadable or corrupt image(s)" in errors and "001.class/train_0.jpg" in errors
    assert "002.class/train_0.jpg" in errors
    assert "1 listed image(s) missing" in errors and "003.class/test_1.jpg" in errors


def test_label_out_of_range_makes_the_task_unusable(tmp_path: Path) -> None:
    task = fx.vtab_noah(tmp_path, folder="smallnorb_ele", classes=3)
    fx.write_list(task / "train800.txt", [("images/train800/000000.jpg", 0), ("images/train800/000001.jpg", 9)])
    check = _check("smallnorb-ele", tmp_path)
    assert not check.usable
    assert _texts(check, ERROR) == ["train: 1 label(s) outside 0..8 (e.g. 9 for 000001.jpg)"]


def test_classes_missing_from_a_split_are_warned(tmp_path: Path) -> None:
    task = fx.vtab_noah(tmp_path, folder="kitti", classes=4, per_class=2)
    lines = [line.split() for line in (task / "test.txt").read_text().splitlines()]
    fx.write_list(task / "test.txt", [(rel, int(label)) for rel, label in lines if label != "3"])
    check = _check("kitti-dist", tmp_path)
    assert check.usable and "test lacks 1 of 4 classes: 3" in _texts(check, WARNING)


def test_test_images_duplicated_in_train_are_warned(tmp_path: Path) -> None:
    task = fx.vtab_noah(tmp_path, folder="dtd", classes=3)
    shutil.copy(task / "images/train800/000000.jpg", task / "images/test/000000.jpg")  # same bytes, other name
    lines = (task / "test.txt").read_text() + "images/train800/000001.jpg 1\n"  # the very same file
    (task / "test.txt").write_text(lines)
    warnings = " | ".join(_texts(_check("dtd", tmp_path), WARNING))
    assert "2 test image(s) duplicated in train/val" in warnings
    assert "test/000000.jpg" in warnings and "train800/000001.jpg" in warnings


def test_missing_task_finding_lists_paths_tried(tmp_path: Path) -> None:
    check = _check("eurosat", tmp_path)
    assert not check.usable and check.layout == ""
    assert "vtab-1k,vtab}/Specialized/eurosat/test.txt" in _texts(check, ERROR)[0]


def test_cli_exits_nonzero_only_when_a_requested_task_is_unusable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx.vtab_noah(tmp_path, folder="dtd", classes=3)
    assert main(["data", "check", "--data-root", str(tmp_path), "--tasks", "dtd,digits"]) == 0
    assert "2 of 2 task(s) usable" in capsys.readouterr().out
    assert main(["data", "check", "--data-root", str(tmp_path), "--tasks", "dtd,cub"]) == 1
    assert "unusable: cub" in capsys.readouterr().out


def test_cli_without_a_data_root_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BENCH_DATA", raising=False)
    assert main(["data", "check", "--tasks", "cub"]) == 2
    assert capsys.readouterr().err.strip().startswith("bench: error: this task reads files from disk; pass --data-root")


def test_parallel_check_reports_progress_and_finds_what_a_serial_check_finds(tmp_path: Path) -> None:
    dataset = fx.fgvc_vpt_json(tmp_path)
    (dataset / "images/001.class/train_0.jpg").write_bytes(b"not an image at all")
    (dataset / "images/003.class/test_1.jpg").unlink()
    seen: list[tuple[str, int, int]] = []
    parallel = check_tasks(["cub"], tmp_path, jobs=4, on_image=lambda *event: seen.append(event))[0]
    serial = check_tasks(["cub"], tmp_path, jobs=1)[0]
    assert parallel.findings == serial.findings and not parallel.usable
    total = 3 * (4 + 1 + 2)
    assert seen == [("cub", done, total) for done in range(total + 1)]


def test_cli_jobs_must_be_a_positive_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "--data-root", str(tmp_path), "--tasks", "cub", "--jobs", "0"]) == 2
    assert "--jobs: expected a positive integer" in capsys.readouterr().err


def test_cli_shows_a_progress_bar_per_task_on_a_terminal(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from bench.cli import build_parser, cmd_data

    fx.fgvc_spt_release(tmp_path, "dogs")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    args = build_parser().parse_args(["data", "check", "--data-root", str(tmp_path), "--tasks", "dogs", "--jobs", "2"])
    assert cmd_data(args, console) == 0
    assert "dogs: reading images" in screen.getvalue() and "1 of 1 task(s) usable" in screen.getvalue()
