"""Guards that keep a user's data safe: output folders that cannot hurt inputs, plain-name ids, a run lock,
input provenance, and a cap on worker processes.

Every check raises :class:`GuardError` (a ``ValueError``) whose message names the path and the problem.

The writer rule (:func:`output_folder`, used by every command that writes a folder): the output folder is checked
against the inputs, locked for one run at a time, and only files this tool wrote there before (its ledger) may be
replaced; temporary files a killed run left are removed. Readers of a shard folder refuse it while its
``pseudomasks`` run is alive (:func:`check_not_being_written`). Numbers read from a file someone else may have made
(a shard, a checkpoint) go through :func:`bounded_number` before they size anything.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import numbers
import os
import stat
import threading
import time
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

LOCK_NAME = ".edgedino.lock"
LEDGER_NAME = ".edgedino-written.json"
#: The longest id, in UTF-8 bytes: ``<ID>_segmentation.png`` must stay under the usual 255-byte name limit.
MAX_ID_BYTES = 200


class GuardError(ValueError):
    """A refused operation; the message names the file or folder and what is wrong."""


# --- names --------------------------------------------------------------------------------------------------

def check_plain_name(name: str, *, what: str = "id", source: str | os.PathLike = "") -> str:
    """Return ``name`` when it is a plain, printable file name: no folder part, not '.'/'..', not empty, no
    control or other unprintable character (``str.isprintable``: letters of any script and spaces are fine), at
    most :data:`MAX_ID_BYTES` bytes in UTF-8.

    Ids become file names (``<ID>_segmentation.png``): ``../x`` or ``/abs/x`` would write outside the
    output folder, and a name with terminal escapes or line breaks would be hard to see, list or delete.
    """
    where = f"{source}: " if source else ""
    if not isinstance(name, str):
        raise GuardError(f"{where}{what} {name!r} is not text; refusing to use it as a file name")
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable())
    if bad:
        raise GuardError(f"{where}{what} {name!r} is not a plain file name (a folder part or an unprintable "
                         "character); refusing to use it as a path")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_ID_BYTES:
        raise GuardError(f"{where}{what} {name[:40]!r}... is {len(name.encode('utf-8', 'surrogateescape'))} bytes "
                         f"long; at most {MAX_ID_BYTES} fit in a file name")
    return name


def bounded_number(value, *, lo: float, hi: float, what: str, source: str | os.PathLike,
                   integer: bool = True) -> int | float:
    """``value`` when it is a number in ``[lo, hi]`` (``integer``: a whole one, a Python or NumPy integer; else
    an int or a finite float), as an int or a float; else :class:`GuardError` naming ``source`` (the file it was
    read from) and ``what``. A bool is not a number here.

    The one check of every size, count and setting read from a file another program may have written (a
    shard's ``orig_shape``, a checkpoint's ``img_size``) before it sizes an allocation or a model.
    """
    kind = numbers.Integral if integer else numbers.Real
    expected = f"a {'whole ' if integer else ''}number in [{lo}, {hi}]"
    if isinstance(value, bool) or not isinstance(value, kind):
        raise GuardError(f"{source}: {what} is {value!r} ({type(value).__name__}); expected {expected}")
    number = int(value) if integer else float(value)
    if not (math.isfinite(number) and lo <= number <= hi):
        raise GuardError(f"{source}: {what} is {number}; expected {expected} (the file is damaged or was not "
                         "written by edgedino)")
    return number


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
            raise GuardError(f"{out}: {option} overlaps the input {src} (is it, or inside or around it); write "
                             "into a folder of its own (no command writes into a folder it reads from)")
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
            files = json.loads(self.path.read_text())["files"] if self.path.exists() else []
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError(files)
            self.names: set[str] = set(files)
        except (ValueError, KeyError, TypeError):
            raise GuardError(f"{self.path}: unreadable record of earlier output; delete it or use a new folder") \
                from None

    def foreign(self, names: Iterable[str]) -> list[str]:
        """The names that exist in the folder and were not written by an earlier run of this command."""
        return sorted(n for n in names if n not in self.names and os.path.lexists(self.folder / n))

    def refuse_foreign(self, names: Iterable[str], *, option: str = "--out",
                       overwrite_flag: str | None = "--overwrite") -> None:
        """Raise :class:`GuardError` when one of ``names`` exists here and no earlier run wrote it (see
        :meth:`foreign`); the message offers ``overwrite_flag`` when the command has one."""
        foreign = self.foreign(names)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            way_out = f", or add {overwrite_flag} to replace them" if overwrite_flag else ", or move those files away"
            raise GuardError(f"{self.folder}: {option} already holds {len(foreign)} file(s) this command did not "
                             f"write ({shown}); choose an empty folder{way_out}")

    def claim(self, names: Sequence[str], *, overwrite: bool = False, option: str = "--out",
              overwrite_flag: str | None = "--overwrite") -> None:
        """Record ``names`` as ours before writing them; refuse when one would replace a file we did not make."""
        if not overwrite:
            self.refuse_foreign(names, option=option, overwrite_flag=overwrite_flag)
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
            owner = _owner(fh)
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

    @staticmethod
    def holder(folder: str | os.PathLike) -> str | None:
        """Who holds the lock of ``folder`` now (``'pseudomasks pid 123'``), or None when no live process does.

        Probes with a shared, non-blocking ``flock`` released at once: a lock left by a dead run is free.
        """
        fh = _open_lock_file(folder)
        if fh is None:  # no lock file (never written by a run), or not one: nobody we can see
            return None
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                return _owner(fh) if exc.errno in (errno.EAGAIN, errno.EACCES) else None
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return None


def _open_lock_file(folder: str | os.PathLike) -> IO | None:
    """The lock file of ``folder`` opened for reading, or None when there is none, it cannot be read, or it is not
    a regular file (opened without blocking: a FIFO planted under its name must not hang a reader)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd)


def _owner(fh: IO) -> str:
    """Who a lock file says holds it (``'pseudomasks pid 123'``), as one short printable line."""
    fh.seek(0)
    text = fh.read(200).strip()
    return (text if text.isprintable() else repr(text)) or "unknown"


def check_not_being_written(path: str | os.PathLike, *, what: str = "shards") -> None:
    """Refuse to read ``path`` (a folder, or a file inside one) while a live run holds its folder's lock.

    A ``pseudomasks`` run lists each shard in ``manifest.json`` as it finishes, so a reader started meanwhile
    would see only part of the data. A lock left by a killed run is no obstacle (its resume is still possible).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    owner = FolderLock.holder(folder)
    if owner is not None:
        command, _, pid = owner.partition(" pid ")
        running = f"a {command} run (pid {pid})" if pid else f"another run ({owner})"
        raise GuardError(f"{folder}: {running} is still writing these {what}; wait for it to finish (or stop it "
                         "and rerun it to complete them) before reading them")


# --- the writer rule ----------------------------------------------------------------------------------------

def _partial_owner(name: str) -> str | None:
    """The file a temporary ``.<name>.<8 random characters>.partial`` (``common.atomic``) was for, or None."""
    if not (name.startswith(".") and name.endswith(".partial")):
        return None
    stem = name[1:-len(".partial")]
    final, dot, random_part = stem.rpartition(".")
    return final if dot and final and len(random_part) == 8 else None


def remove_partials(folder: str | os.PathLike, names: Iterable[str]) -> int:
    """Remove the temporary files a killed run left for ``names`` (paths relative to ``folder``) and for the
    ledger; other hidden files are left alone. Returns how many were removed."""
    folder = Path(folder)
    by_dir: dict[Path, set[str]] = {folder: {LEDGER_NAME}}
    for name in names:
        rel = Path(name)
        by_dir.setdefault(folder / rel.parent, set()).add(rel.name)
    removed = 0
    for where, finals in by_dir.items():
        try:
            entries = list(os.scandir(where))
        except OSError:  # a sub-folder not made yet
            continue
        for entry in entries:
            if _partial_owner(entry.name) in finals and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    return removed


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, *, command: str, names: Sequence[str] = (),
                  inputs: Iterable[str | os.PathLike] = (), flat_inputs: bool = False, overwrite: bool = False,
                  option: str = "--out", overwrite_flag: str | None = None) -> Iterator[Ledger]:
    """The one rule of every command that writes into a folder; yields the folder's :class:`Ledger`.

    In order: ``out`` must not overlap the ``inputs`` (:func:`check_out_dir`); none of ``names`` (the files the
    command is about to write, relative to ``out``) may exist unless an earlier run of a command wrote it (the
    ledger), checked before anything is created, so a refused folder is left exactly as it was; then ``out`` is
    created, locked for this run (:class:`FolderLock`: a second run into a busy folder is refused in one line),
    ``names`` recorded in the ledger, and temporary files a killed run left for them removed. ``overwrite``
    (the command's ``overwrite_flag``) lets ``names`` replace files no run wrote.

    A folder written before ledgers existed, whose lock file names this same ``command``, is taken as this
    command's: its files are adopted (so a pretraining run started by an older edgedino still resumes).
    """
    out = check_out_dir(out, inputs, option=option, flat_inputs=flat_inputs)
    names = list(names)
    # read before the lock, which rewrites the lock file: a folder of this command from before ledgers existed
    legacy = out.is_dir() and not (out / LEDGER_NAME).exists() and _locked_before_by(out, command)
    if out.is_dir() and not overwrite and not legacy:  # read-only: a refused folder is left exactly as it was
        Ledger(out).refuse_foreign(names, option=option, overwrite_flag=overwrite_flag)
    make_out_dir(out, option=option)
    with FolderLock(out, command=command):
        ledger = Ledger(out)  # read again under the lock
        if legacy and not ledger.path.exists():
            ledger.names |= {n for n in names if os.path.lexists(out / n)}
        ledger.claim(names, overwrite=overwrite, option=option, overwrite_flag=overwrite_flag)
        remove_partials(out, ledger.names)
        yield ledger


def _locked_before_by(folder: Path, command: str) -> bool:
    """True when ``folder`` holds a lock file written by ``command`` (a run of it wrote here)."""
    fh = _open_lock_file(folder)
    if fh is None:
        return False
    with fh:
        return _owner(fh).startswith(f"{command} pid ")


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
