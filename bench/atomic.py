"""Files written whole or not at all, and a disk that refuses a write told to the user in one line.

Everything a run keeps in the results folder (its record, cache entries) is written under a temporary name beside
its target and renamed into place, so a reader never sees half a file. When writing fails for any reason, the
temporary is removed; when the disk refused it (full, over quota, read-only), `bench` stops with a `WriteFailed`:
what could not be written, where, and that the records of finished runs are kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from bench import BenchError


class WriteFailed(BenchError):
    """The disk refused a write. Not a failure of the run that was writing: the scheduler lets it stop the grid
    rather than record the run as failed, so a rerun after freeing space runs it again."""


@contextlib.contextmanager
def replacing(target: Path, what: str, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `target` for the block to write (a file, or with `folder` a folder it creates),
    renamed to `target` when the block ends and removed when it fails.

    The block should only write: an `OSError` raised in it, or in creating `target`'s folder or renaming, becomes a
    `WriteFailed` naming `what` (e.g. "the record of run 1a2b") and the folder.
    """
    # Unique per call, not per process: the threads of a Dask worker may write the same cache entry at once.
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, target)
    except BaseException as exc:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteFailed(
                f"cannot write {what} in {target.parent}: {exc.strerror or exc}; the records of finished runs are "
                "kept: free space there and rerun to resume"
            ) from None
        raise
