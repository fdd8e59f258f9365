"""`bench data fetch` against a local stand-in for the Hugging Face hub (tests/hub_server.py, 127.0.0.1 only).

The archives are tiny copies of the real layouts (tests/data_fixtures.py); `huggingface_hub` makes its real calls to
the local server. No test reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import data_fixtures as fx
import pytest
from huggingface_hub import constants
from hub_server import HubServer, git_blob_sha1

from bench import BenchError, fingerprint
from bench.cli import main
from bench.data import TASKS
from bench.datafetch import (
    DOWNLOADS, FETCHES, IN_PLACE, MANUAL, PLACED, STAGING, UNTOUCHED, ImageArchive, SplitDataset, WebFile,
    check_placed, fetch, safe_unpack,
)
from bench.record import RunRecord

VTAB_REPO, VTAB_ZIP = "XiN0919/VTAB-1k", "vtab-1k.zip"


@pytest.fixture
def online(monkeypatch):
    """Offline mode off for this test only (CI sets HF_HUB_OFFLINE=1); every request goes to the local server."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def zip_tree(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def vtab_zip(tmp_path: Path, folders: tuple[str, ...] = ("oxford_iiit_pet", "dtd")) -> bytes:
    """V-PETL Bench's archive in miniature: `vtab-1k/<task>/` in the NOAH layout, 3 classes, 30 images a task."""
    source = tmp_path / "archive-source"
    for folder in folders:
        fx.vtab_noah(source, folder=folder, classes=3, per_class=2)
    return zip_tree(source)


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its bytes (folders: "dir")."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def test_fetch_vtab_unpacks_into_the_noah_layout_and_writes_the_fingerprint_runs_record(tmp_path, online):
    root = tmp_path / "data"
    root.mkdir()
    with HubServer() as hub:
        path = hub.hub_file(VTAB_REPO, VTAB_ZIP, vtab_zip(tmp_path))
        placements = fetch("vtab-1k", root, ["pets", "dtd", "svhn"], endpoint=hub.url)
        checks = check_placed(placements, root, jobs=2)
    status = {p.task: p.status for p in placements}
    assert status == {"pets": PLACED, "dtd": PLACED, "svhn": "not in the archive"}
    assert [method for method, p, _ in hub.log if p == path] == ["HEAD", "GET"]
    # Detected by the family's own finder, checked clean, and the run's fingerprint is the one written beside it.
    assert all(check.usable and check.layout == "vtab-noah" for check in checks)
    data = TASKS.get("pets").load(root)
    written = json.loads((root / "vtab-1k" / "oxford_iiit_pet" / fingerprint.FILE).read_text())
    assert data.info["fingerprint"] == written["fingerprint"]
    assert written["fetched"]["sha256"] == hashlib.sha256(hub.files[path].body).hexdigest()
    assert written["deep"]["of"] == fingerprint.FILES_DEEP
    # The archive is gone once unpacked, and so are the staging folder and the downloads folder.
    assert sorted(p.name for p in root.iterdir()) == ["vtab-1k"]


def test_a_transfer_cut_mid_file_resumes_from_the_bytes_already_on_disk(tmp_path, online, monkeypatch):
    # huggingface_hub writes what it receives in chunks of this size; small chunks put bytes on disk before the cut.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    root = tmp_path / "data"
    root.mkdir()
    with HubServer() as hub:
        path = hub.hub_file(VTAB_REPO, VTAB_ZIP, vtab_zip(tmp_path))
        size = len(hub.files[path].body)
        hub.cut_after = size // 2
        with pytest.raises(BenchError, match="HTTP 503.*resumes"):
            fetch("vtab-1k", root, ["pets"], endpoint=hub.url)
        (part,) = (root / DOWNLOADS).glob("*.part")
        kept = part.stat().st_size
        assert 0 < kept <= size // 2
        assert not (root / "vtab-1k").exists() and not list(root.glob(f"{STAGING}*"))  # nothing half-made

        hub.heal()
        placements = fetch("vtab-1k", root, ["pets"], endpoint=hub.url)
    assert placements[0].status == PLACED
    assert hub.gets(path)[0] is None and hub.gets(path)[-1] == f"bytes={kept}-"
    TASKS.get("pets").load(root)  # the resumed archive is whole: every listed image is there


def test_a_checksum_mismatch_is_one_line_and_leaves_nothing_in_the_data_root(tmp_path, online):
    root = tmp_path / "data"
    root.mkdir()
    with HubServer() as hub:
        hub.hub_file(VTAB_REPO, VTAB_ZIP, vtab_zip(tmp_path), etag=hashlib.sha256(b"another file").hexdigest())
        with pytest.raises(BenchError, match="failed its checksum") as raised:
            fetch("vtab-1k", root, ["pets"], endpoint=hub.url)
    assert "\n" not in str(raised.value)
    assert list(root.iterdir()) == []


def test_tasks_already_in_the_data_root_are_left_untouched(tmp_path, online):
    root = tmp_path / "data"
    fx.vtab_noah(root, folder="oxford_iiit_pet", classes=3, per_class=1)  # a usable pets, not the archive's
    broken = root / "vtab-1k" / "dtd"
    broken.mkdir()
    (broken / "README").write_text("someone's half-copied dtd")
    before = tree(root)
    with HubServer() as hub:
        path = hub.hub_file(VTAB_REPO, VTAB_ZIP, vtab_zip(tmp_path))
        only_pets = fetch("vtab-1k", root, ["pets"], endpoint=hub.url)
        assert only_pets[0].status == IN_PLACE and hub.log == []  # nothing to fetch: the hub is not even asked
        placements = fetch("vtab-1k", root, ["pets", "dtd", "eurosat"], endpoint=hub.url)
        assert hub.gets(path) == [None]
    assert {p.task: p.status for p in placements} == {"pets": IN_PLACE, "dtd": UNTOUCHED,
                                                      "eurosat": "not in the archive"}
    assert tree(root) == before


def test_offline_mode_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["data", "fetch", "vtab-1k", "--data-root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: HF_HUB_OFFLINE is set") and "\n" not in err
    assert list((tmp_path / "data").iterdir()) == []


def test_a_fetch_with_no_data_root_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.delenv("BENCH_DATA", raising=False)
    assert main(["data", "fetch", "vtab-1k"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench: error: no folder to put the data in; pass --data-root DIR or set BENCH_DATA=DIR"


def test_no_network_is_one_line_and_exit_2(tmp_path, online, monkeypatch, capsys):
    with socket.socket() as probe:  # a port on 127.0.0.1 that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # What HF_ENDPOINT sets when huggingface_hub is imported (the subprocess test below sets the variable itself).
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    assert main(["data", "fetch", "vtab-1k", "--data-root", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error: cannot download") and f"127.0.0.1:{port}" in lines[0]
    assert list(tmp_path.iterdir()) == []


def _bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**env, "BENCH_WORKERS": "1"})


def test_fetch_then_bench_run_on_the_fetched_task_records_its_fingerprint(tmp_path):
    data, results = tmp_path / "data", tmp_path / "results"
    with HubServer() as hub:
        hub.hub_file(VTAB_REPO, VTAB_ZIP, vtab_zip(tmp_path))
        # As a user on a machine with internet: HF_HUB_OFFLINE unset; HF_ENDPOINT names the (local) hub.
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        fetched = _bench("data", "fetch", "vtab-1k", "--tasks", "pets", "--data-root", str(data),
                         env={**env, "HF_ENDPOINT": hub.url})
    assert fetched.returncode == 0, fetched.stderr + fetched.stdout
    assert "bench data check" in fetched.stdout and "pets: placed" in fetched.stdout
    written = json.loads((data / "vtab-1k" / "oxford_iiit_pet" / fingerprint.FILE).read_text())
    assert written["fingerprint"]["digest"][:fingerprint.SHORT] in fetched.stdout  # the check table shows it

    ran = _bench("run", "--methods", "linear", "--tasks", "pets", "--epochs", "1", "--backbone", "micro-vit",
                 "--protocol", "fixed", "--data-root", str(data), "--results", str(results),
                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert ran.returncode == 0, ran.stderr + ran.stdout
    (record,) = [RunRecord.from_dict(json.loads(p.read_text())) for p in (results / "runs").glob("*.json")]
    assert record.status == "done" and record.task.data["layout"] == "vtab-noah"
    assert record.task.data["fingerprint"] == written["fingerprint"]


def test_fetch_fgvc_places_cub_from_its_archive_and_leaves_cars_to_a_person(tmp_path, online, monkeypatch):
    source = tmp_path / "source"
    cub = fx.fgvc_vpt_json(source / "splits", folder="CUB_200_2011", image_dir="images")
    fx.fgvc_vpt_json(source / "splits", folder="Stanford-cars", image_dir="car_ims")
    images = io.BytesIO()
    with tarfile.open(fileobj=images, mode="w:gz") as tf:  # the official archive: CUB_200_2011/images/...
        tf.add(cub / "images", arcname="CUB_200_2011/images")
    for folder in (source / "splits").iterdir():  # json.zip holds the split files only
        for image_folder in [p for p in folder.iterdir() if p.is_dir()]:
            os.rename(image_folder, tmp_path / f"moved-{folder.name}")
    splits = zip_tree(source / "splits")
    root = tmp_path / "data"
    root.mkdir()
    with HubServer() as hub:
        # A small file the hub keeps in git, not LFS: its ETag is the git blob sha1.
        hub.hub_file("XiN0919/FGVC", "json.zip", splits, etag=git_blob_sha1(splits))
        url = hub.web_file("CUB_200_2011.tgz", images.getvalue())
        cub_source = FETCHES.get("fgvc").datasets["cub"]
        archive = ImageArchive(WebFile(url, "CUB_200_2011.tgz", hashlib.md5(images.getvalue()).hexdigest()),
                               "CUB_200_2011/images", "images")
        monkeypatch.setitem(FETCHES.get("fgvc").datasets, "cub",
                            SplitDataset(cub_source.folders, cub_source.classes, archive))
        placements = fetch("fgvc", root, ["cub", "cars"], endpoint=hub.url)
    cub_placed, cars = placements
    assert cub_placed.status == PLACED and TASKS.get("cub").load(root).info["layout"] == "fgvc-vpt-json"
    assert cars.status == MANUAL and (root / "Cars" / "train.json").is_file()
    first = next(iter(json.loads((root / "Cars" / "train.json").read_text())))
    assert str(root / "Cars" / first) in cars.note


def _zip_with(name: str, symlink_to: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("vtab-1k/dtd/test.txt", "images/a.jpg 0\n")
        info = zipfile.ZipInfo(name)
        if symlink_to is not None:
            info.external_attr = (0o120777 << 16)  # a symbolic link, as zip tools store one
        zf.writestr(info, symlink_to or "escaped")
    return buffer.getvalue()


def _tar_with(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("images/ok.txt")
        tf.addfile(info, io.BytesIO(b""))
        bad = tarfile.TarInfo(name)
        bad.type, bad.linkname = kind, link
        tf.addfile(bad, io.BytesIO(b""))
    return buffer.getvalue()


HOSTILE = {
    "zip ../": (_zip_with("../escaped.txt"), "'..'"),
    "zip absolute": (_zip_with("/tmp/escaped.txt"), "absolute path"),
    "zip symlink": (_zip_with("vtab-1k/link", symlink_to="/etc"), "symbolic link"),
    "tar ../": (_tar_with("images/../../escaped.txt"), "'..'"),
    "tar absolute": (_tar_with("/tmp/escaped.txt"), "absolute path"),
    "tar symlink out": (_tar_with("images/link", tarfile.SYMTYPE, "../../outside"), "symbolic link"),
    "tar symlink absolute": (_tar_with("images/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "tar hard link out": (_tar_with("images/link", tarfile.LNKTYPE, "../outside"), "hard link"),
    "tar device": (_tar_with("images/dev", tarfile.CHRTYPE), "device"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_archive_is_refused_before_anything_is_written(tmp_path, case):
    body, reason = HOSTILE[case]
    archive = tmp_path / "downloads" / "archive"
    archive.parent.mkdir()
    archive.write_bytes(body)
    with pytest.raises(BenchError, match=f"refused: entry .*{reason}.*nothing was unpacked"):
        safe_unpack(archive, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


def test_fetch_refuses_a_hostile_hub_archive_and_writes_nothing_inside_or_outside_the_data_root(tmp_path, online):
    root = tmp_path / "data"
    root.mkdir()
    with HubServer() as hub:
        hub.hub_file(VTAB_REPO, VTAB_ZIP, _zip_with("../escaped.txt"))
        with pytest.raises(BenchError, match="refused"):
            fetch("vtab-1k", root, ["dtd"], endpoint=hub.url)
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_damaged_archive_is_one_line_and_leaves_no_partial_folder(tmp_path):
    archive = tmp_path / "CUB_200_2011.tgz"
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w:gz") as tf:
        tf.addfile(tarfile.TarInfo("images/a.txt"), io.BytesIO(b""))
    archive.write_bytes(whole.getvalue()[:-20])  # cut short: the gzip stream ends early
    with pytest.raises(BenchError, match="CUB_200_2011.tgz is damaged"):
        safe_unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
