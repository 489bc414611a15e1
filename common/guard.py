"""Guards that keep a user's data safe: output folders that cannot hurt inputs, plain-name ids, a run lock,
input provenance, and a cap on worker processes.

Every check raises :class:`GuardError` (a ``ValueError``) whose message names the path and the problem.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, Iterable, Sequence

log = logging.getLogger(__name__)

LOCK_NAME = ".edgedino.lock"
LEDGER_NAME = ".edgedino-written.json"


class GuardError(ValueError):
    """A refused operation; the message names the file or folder and what is wrong."""


# --- names --------------------------------------------------------------------------------------------------

def check_plain_name(name: str, *, what: str = "id", source: str | os.PathLike = "") -> str:
    """Return ``name`` when it is a plain file name (no folder part, not '.'/'..', no NUL, not empty).

    Ids become file names (``<ID>_segmentation.png``): ``../x`` or ``/abs/x`` would write outside the
    output folder.
    """
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
           or name != name.strip("\n\r"))
    if bad:
        where = f"{source}: " if source else ""
        raise GuardError(f"{where}{what} {name!r} is not a plain file name; refusing to use it as a path")
    return name


# --- output folders -----------------------------------------------------------------------------------------

def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, option: str = "--out",
                  flat_inputs: bool = False) -> Path:
    """Refuse an output folder that is, contains or lies inside one of the ``inputs`` (folders or files read).

    ``flat_inputs``: the inputs are read without their sub-folders (a shard folder), so only ``out`` equal to
    one of them is refused. For a file input, its own folder is refused. Also refuses an ``out`` that exists
    and is not a folder. Nothing is created. Returns ``out`` as a Path.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GuardError(f"{out}: {option} exists and is not a folder")
    real_out = _real(out)
    for src in inputs:
        real_src = _real(src)
        if real_src.is_file():  # a file read: only its own folder is off limits
            overlap = real_out == real_src.parent
        elif flat_inputs:
            overlap = real_out == real_src
        else:
            overlap = _inside(real_out, real_src) or _inside(real_src, real_out)
        if overlap:
            raise GuardError(f"{out}: {option} overlaps the input {src}; write into a folder of its own "
                             "(no command writes into a folder it reads from)")
    return out


def make_out_dir(out: str | os.PathLike, *, option: str = "--out") -> Path:
    """Create ``out`` (and parents), turning permission / not-a-folder errors into one clear line."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise GuardError(f"{out}: {option} exists and is not a folder") from None
    except OSError as exc:
        raise GuardError(f"{out}: cannot create {option} ({exc.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise GuardError(f"{out}: {option} is not writable")
    return out


class Ledger:
    """The files a command wrote into a folder (``.edgedino-written.json``): it may overwrite only those.

    >>> ledger = Ledger(out)                     # doctest: +SKIP
    >>> ledger.claim(names, overwrite=False)     # refuses names that exist and are not ours
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LEDGER_NAME
        try:
            self.names: set[str] = set(json.loads(self.path.read_text())["files"]) if self.path.exists() else set()
        except (ValueError, KeyError, TypeError):
            raise GuardError(f"{self.path}: unreadable record of earlier output; delete it or use a new folder") \
                from None

    def foreign(self, names: Iterable[str]) -> list[str]:
        """The names that exist in the folder and were not written by an earlier run of this command."""
        return sorted(n for n in names if n not in self.names and os.path.lexists(self.folder / n))

    def claim(self, names: Sequence[str], *, overwrite: bool = False, option: str = "--out") -> None:
        """Record ``names`` as ours before writing them; refuse when one would replace a file we did not make."""
        foreign = self.foreign(names)
        if foreign and not overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise GuardError(f"{self.folder}: {option} already holds {len(foreign)} file(s) this command did not "
                             f"write ({shown}); choose an empty folder, or add --overwrite to replace them")
        from common.atomic import write_text

        self.names |= set(names)
        write_text(self.path, json.dumps({"files": sorted(self.names)}) + "\n")


def claim_file(path: str | os.PathLike, *, option: str) -> Path:
    """Make one output file ours before writing it (a contact sheet, a JSON report): refuse to replace a file
    that no earlier run of a command wrote, which the folder's :class:`Ledger` records. Returns the path."""
    path = Path(path)
    folder = make_out_dir(path.parent, option=f"{option} folder")
    ledger = Ledger(folder)
    if ledger.foreign([path.name]):
        raise GuardError(f"{path}: {option} would replace a file this tool did not write; choose another name "
                         "or move that file away first")
    ledger.claim([path.name], option=option)
    return path


# --- the run lock -------------------------------------------------------------------------------------------

class FolderLock:
    """An exclusive lock on an output folder (``.edgedino.lock``, ``flock``): one run at a time.

    The kernel drops the lock when its process dies, so a stale lock file left by a killed run is simply
    taken over. The file holds the owner's pid for the message a second run prints.
    """

    def __init__(self, folder: str | os.PathLike, *, command: str = "edgedino"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._fh: IO | None = None

    def __enter__(self) -> "FolderLock":
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise GuardError(f"{self.folder}: another run is writing into this folder ({owner}); wait for it "
                             "to finish or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{self.command} pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


# --- provenance ---------------------------------------------------------------------------------------------

def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes as hex, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def inputs_hash(samples: Sequence, parts: Sequence[str] | None = None) -> str:
    """One hash of what a shard is made from: each sample's id, image path and image bytes, and mask bytes.

    A second dataset with the same ids, an edited image or mask, or a moved folder gives another hash, so a
    resume redoes the shard instead of answering with the old masks. An unreadable file hashes as its error
    (it is rejected with its reason by the run anyway). ``parts``: the samples' :func:`input_part` when the
    workers have read them already (the same hash, without reading every file again at the end).
    """
    digest = hashlib.sha256()
    for part in (parts if parts is not None else map(input_part, samples)):
        digest.update((part + "\x1e").encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def input_part(sample) -> str:
    """What :func:`inputs_hash` takes from one sample: its id, image path and the sha256 of its files."""
    parts = [sample.id, str(sample.image)]
    for path in (sample.image, sample.mask):
        if path is None:
            parts.append("-")
            continue
        try:
            parts.append(sha256_file(path))
        except OSError as exc:
            parts.append(f"error:{exc.errno}")
    return "\x1f".join(parts)


# --- workers ------------------------------------------------------------------------------------------------

def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cap_jobs(jobs: int, n_items: int) -> int:
    """``jobs`` capped at the work items and the cores (``-1`` or ``0``: all cores), with a note when capped."""
    cores = available_cores()
    wanted = cores if jobs <= 0 else jobs
    capped = max(1, min(wanted, cores, max(n_items, 1)))
    if jobs > 0 and capped < jobs:
        log.info("--jobs %d capped to %d (%d work item(s), %d core(s) available)", jobs, capped, n_items, cores)
    return capped


_watching: set[int] = set()


def watch_parent(owner_pid: int | None, *, every: float = 0.5) -> None:
    """In a worker: end this process as soon as its parent is no longer ``owner_pid`` (the run was killed).

    A daemon thread polls ``os.getppid()`` (a killed parent re-parents its children). Started once per process;
    a half-written shard is only a ``.partial`` file, which the next run removes.
    """
    if owner_pid is None or owner_pid in _watching:
        return
    _watching.add(owner_pid)

    def poll() -> None:
        while True:
            if os.getppid() != owner_pid:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=poll, name="edgedino-parent-watch", daemon=True).start()


def parent_is_gone(owner_pid: int | None) -> bool:
    """True when this worker's parent is no longer ``owner_pid`` (the run was killed: stop, write nothing)."""
    return owner_pid is not None and os.getppid() != owner_pid
