"""The one way this project writes a file: to a temporary sibling, flushed, then renamed.

A reader (or a rerun after a crash) sees either the old file or the whole new one, never half of it. Many small
files (exported masks, predictions) go through :func:`atomic_batch`: the same guarantee with one sync per batch
instead of one fsync per file.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | os.PathLike, path: Path) -> None:
    """Give the temporary file the permissions of a normally created file (mkstemp makes it 0600), rename."""
    os.chmod(tmp, (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
             & ~_umask())
    os.replace(tmp, path)


def _name_the_file(exc: BaseException, path: Path) -> None:
    """Give an OSError from a write (e.g. ENOSPC, disk full) the file it was for, when it names none."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, suffix: str = ".partial") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``.

    Parameters
    ----------
    path : path-like
        The final file. Its folder is created if missing.
    mode : {'wb', 'w'}
        Binary or text.
    suffix : str
        Suffix of the temporary name (``<name>.<random><suffix>``); readers ignore such files.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_the_file(exc, path)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that open files themselves (h5py, torch.save).

    The temporary file is renamed onto ``path`` when the block ends without error, and removed otherwise.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _name_the_file(exc, path)
        raise


@functools.cache
def _syncfs():
    """libc's ``syncfs`` or None, looked up once (``find_library`` may run ``ldconfig``)."""
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None


def _sync_folder_fs(folder: Path) -> None:
    """Flush every written page of the file system holding ``folder``: ``syncfs`` (Linux), else ``os.sync``."""
    syncfs = _syncfs()
    if syncfs is not None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicBatch:
    """Files of one folder written as a batch: see :func:`atomic_batch`."""

    def __init__(self, folder: Path, suffix: str) -> None:
        self.folder, self.suffix = folder, suffix
        self.pending: list[tuple[str, Path]] = []

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to a temporary file for ``folder/name``; it is renamed when the batch ends."""
        if Path(name).name != name:
            raise ValueError(f"atomic_batch: {name!r} is not a plain file name")
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=self.suffix, dir=self.folder)
        self.pending.append((tmp, self.folder / name))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:  # e.g. ENOSPC: name the file it was for (an OSError from write names none)
            _name_the_file(exc, self.folder / name)
            raise


@contextlib.contextmanager
def atomic_batch(folder: str | os.PathLike, *, suffix: str = ".partial") -> Iterator[AtomicBatch]:
    """Write many files into ``folder`` with one sync: temporary files, one ``syncfs``, renames, one folder fsync.

    Inside the block, ``batch.write_bytes(name, data)`` writes a temporary sibling of ``folder/name`` (no fsync).
    When the block ends without error, the file system is synced once, every temporary file is renamed onto its
    final name and the folder is fsynced once; on an exception every temporary file is removed and no final name
    appears. So, as with :func:`atomic_write`, a reader or a rerun never sees a half-written file, at one sync
    per batch instead of one fsync per file (1,962 exported masks: ~5 s instead of ~160 s on this machine).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    batch = AtomicBatch(folder, suffix)
    try:
        yield batch
        if batch.pending:
            _sync_folder_fs(folder)
            for tmp, path in batch.pending:
                _publish(tmp, path)
            _fsync_dir(folder)
    except BaseException as exc:
        for tmp, _ in batch.pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _name_the_file(exc, folder)  # a failed sync or rename: the folder being written
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 80) -> Path:
    """Save a matplotlib figure as PNG atomically, close it, and return the path."""
    import matplotlib.pyplot as plt  # only when a figure is saved (start-up time)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
