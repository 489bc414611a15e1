"""The parallel pseudo-mask run: plan shards, process images with loky workers (or Dask), resume, record rejects.

Each shard has a fixed list of ids (the sorted ids of all data folders, cut every ``shard_size``). With the
loky backend the *images* are the parallel tasks, whatever the shard size (a 99-image set in one shard still
uses every worker), and the run's own process is one of the ``--jobs`` (it computes images too); it assembles
each shard in order as soon as all its images are back and writes it. With Dask each shard is one task,
written by its worker. A rerun keeps every shard that exists whole with the same config and ids, and redoes
the rest; the result does not depend on ``--jobs`` or the backend.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from common import datasets
from common.atomic import write_text
from common.guard import (
    Ledger,
    cap_jobs,
    check_out_dir,
    input_part,
    inputs_hash,
    output_folder,
    parent_is_gone,
    sha256_file,
    watch_parent,
)
from pipeline.pseudomask.per_image import PseudoMaskConfig, make_pseudo_mask
from pipeline.shards import (
    MANIFEST,
    REJECTS,
    ShardError,
    ShardReader,
    ShardRecord,
    _read_every_chunk,
    find_shards,
    ids_hash,
    read_manifest,
    shard_name,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)

BACKENDS = ("loky", "dask")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the content of the shards (``jobs`` and the backend do not).

    Attributes
    ----------
    size : int
        Storage (training) resolution S: every image is squashed to S x S.
    shard_size : int
        Samples per shard (one joblib task each). Smaller shards resume at a finer grain and balance
        better across workers; larger ones mean fewer files.
    decode_long_side : int
        JPEGs larger than this are decoded at 1/2, 1/4 or 1/8 size (keeping at least this long side),
        which keeps 8000 x 6000 images cheap in memory.
    seed : int
        Per-sample randomness comes from ``(seed, id)`` (:func:`sample_seed`): it seeds ``--method s3net``;
        the walker is deterministic.
    pseudo : PseudoMaskConfig
        Hair removal, seeding and walker parameters.
    """

    size: int = 256
    shard_size: int = 128
    decode_long_side: int = 1024
    seed: int = 0
    pseudo: PseudoMaskConfig = field(default_factory=PseudoMaskConfig)

    def __post_init__(self):
        if self.size < 32:
            raise ValueError(f"size must be >= 32 px, got {self.size}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    def to_json(self) -> str:
        config = dataclasses.asdict(self)
        if self.pseudo.method == "walker":
            # Walker runs keep the config (and hash) they had before --method existed, so they still resume.
            del config["pseudo"]["method"], config["pseudo"]["s3net"]
        return json.dumps(config, sort_keys=True)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardPlan:
    index: int
    samples: tuple[datasets.Sample, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


@dataclass
class RunSummary:
    out_dir: Path
    n_shards: int
    n_samples: int
    n_rejected: int
    n_resumed_shards: int
    n_no_lesion: int
    seconds: float
    rejects: list[dict]

    def line(self) -> str:
        return (f"done: {self.n_samples} sample(s) in {self.n_shards} shard(s) under {self.out_dir} "
                f"({self.n_resumed_shards} shard(s) kept from an earlier run, {self.n_no_lesion} without a lesion); "
                f"{self.n_rejected} rejected" + (f" (see {self.out_dir / REJECTS})" if self.n_rejected else ""))


def plan_shards(dataset: datasets.Dataset, shard_size: int) -> list[ShardPlan]:
    """Cut the sorted samples into shards of ``shard_size``."""
    s = dataset.samples
    return [ShardPlan(i, tuple(s[j:j + shard_size])) for i, j in enumerate(range(0, len(s), shard_size))]


def library_versions() -> dict[str, str]:
    import cv2
    import h5py
    import pyamg
    import scipy
    import skimage

    return {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
            "opencv": cv2.__version__, "h5py": h5py.__version__, "pyamg": pyamg.__version__,
            "schema": "1"}


def sample_seed(seed: int, sample_id: str) -> int:
    """A 31-bit seed that depends only on the run seed and the sample id (not on workers or order)."""
    digest = hashlib.sha256(f"{int(seed)}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def process_sample(sample: datasets.Sample, config: RunConfig) -> ShardRecord:
    """Read one image and make its pseudo-mask. Raises ``ImageReadError`` for unusable input."""
    import cv2

    header = datasets.image_header(sample.image)
    height, width = header.height, header.width
    if sample.mask is not None:
        mh, mw = datasets.image_size(sample.mask)
        if (mh, mw) != (height, width):
            raise datasets.ImageReadError(f"{sample.mask}: mask size {mw}x{mh} differs from image size "
                                          f"{width}x{height}")
    image = datasets.read_image(sample.image, min_long_side=config.decode_long_side, header=header)
    result = make_pseudo_mask(image, size=config.size, config=config.pseudo,
                              seed=sample_seed(config.seed, sample.id))
    stored_image = result.cleaned
    if stored_image.shape[:2] != (config.size, config.size):
        stored_image = cv2.resize(stored_image, (config.size, config.size), interpolation=cv2.INTER_AREA)
    diagnostics = {k: float(v) for k, v in result.diagnostics.items() if "second" not in k}
    return ShardRecord(id=sample.id, path=str(sample.image), orig_shape=(height, width), image=stored_image,
                       hair_mask=result.hair_mask, prob=result.prob, pseudo_mask=result.mask,
                       no_lesion=bool(result.no_lesion), diagnostics=diagnostics)


class ParentGone(RuntimeError):
    """The run that started this worker is gone (killed): the worker stops without writing."""


class WorkerDied(RuntimeError):
    """A local worker process stopped without a result (killed, out of memory, a crash in a C library)."""


_controller: tuple[int, object] | None = None


def _one_thread():
    """A context that limits every loaded BLAS / OpenMP pool to one thread (threadpoolctl).

    The library scan behind ``threadpool_limits`` costs about 1.5 ms, as much as a tenth of an image's walker:
    the controller is kept per process and scanned again only when modules were imported since (a library
    loaded later, such as torch, is then covered too).
    """
    global _controller
    from threadpoolctl import ThreadpoolController

    if _controller is None or _controller[0] != len(sys.modules):
        _controller = (len(sys.modules), ThreadpoolController())
    return _controller[1].limit(limits=1)


def try_sample(sample: datasets.Sample, config: RunConfig, owner_pid: int | None = None) -> ShardRecord | dict:
    """:func:`process_sample` in one thread, or the reject ``{"id", "path", "reason"}`` when it fails.

    ``owner_pid`` (the run's process, for local workers) is checked first, and watched while the worker lives:
    a worker orphaned by a killed run stops instead of computing (and never writes: shards are written by the
    run's own process, or by :func:`process_shard` after another check).
    """
    import cv2

    cv2.setNumThreads(1)
    if parent_is_gone(owner_pid):
        raise ParentGone(f"{sample.image}: the run that started this worker is gone; stopping")
    watch_parent(owner_pid)  # and end this worker as soon as the run dies, even while it waits for work
    with _one_thread():  # same arithmetic whatever the backend: results do not depend on --jobs
        try:
            return process_sample(sample, config)
        except datasets.ImageReadError as exc:
            return {"id": sample.id, "path": str(sample.image), "reason": str(exc)}
        except Exception as exc:  # a bug or an input the method cannot handle: keep the run going
            log.exception("pseudo-mask failed for %s", sample.image)
            return {"id": sample.id, "path": str(sample.image),
                    "reason": f"{sample.image}: pseudo-mask failed ({type(exc).__name__}: {exc})"}


def hashed_sample(sample: datasets.Sample, config: RunConfig, owner_pid: int | None = None
                  ) -> tuple[ShardRecord | dict, str]:
    """``(try_sample(...), input_part(sample))``: the sample's files are hashed where it is processed, just
    before, so the shard's ``inputs_hash`` costs the run no serial pass over every file at the end."""
    part = input_part(sample)
    return try_sample(sample, config, owner_pid), part


def write_planned_shard(plan: ShardPlan, out_dir: str | Path, config: RunConfig,
                        results: Sequence[ShardRecord | dict], seconds: float, owner_pid: int | None = None,
                        parts: Sequence[str] | None = None) -> dict:
    """Write the shard of ``plan`` from its per-sample results (in plan order); return its manifest entry.
    ``parts``: the samples' :func:`common.guard.input_part`, when already computed."""
    records = [r for r in results if isinstance(r, ShardRecord)]
    rejects = [r for r in results if not isinstance(r, ShardRecord)]
    path = Path(out_dir) / plan.name
    if parent_is_gone(owner_pid):
        raise ParentGone(f"{plan.name}: the run that started this worker is gone; not writing it")
    digest = write_shard(path, records, size=config.size, config_json=config.to_json(), config_hash=config.hash,
                         planned_ids=plan.ids, rejects=rejects, versions=library_versions(),
                         inputs_hash=inputs_hash(plan.samples, parts))
    return _entry(path, len(records), rejects, seconds=seconds, n_no_lesion=sum(r.no_lesion for r in records),
                  sha256=digest)


def process_shard(plan: ShardPlan, out_dir: str | Path, config: RunConfig, owner_pid: int | None = None,
                  on_images=None) -> dict:
    """Process every sample of ``plan`` and write its shard; return its manifest entry (one process, or a Dask task).

    A sample that fails is recorded in the shard's rejects with the reason, and the shard goes on. ``owner_pid``
    is checked before each sample and before the write (see :func:`try_sample`). ``on_images(1)`` is called
    after each sample (the progress bar), when given.
    """
    start = time.perf_counter()
    done = []
    for sample in plan.samples:
        done.append(hashed_sample(sample, config, owner_pid))
        if on_images is not None:
            on_images(1)
    results, parts = zip(*done)
    return write_planned_shard(plan, out_dir, config, results, time.perf_counter() - start, owner_pid, parts)


def _entry(path: Path, rows: int, rejects: list[dict], *, seconds: float | None, n_no_lesion: int,
           sha256: str) -> dict:
    return {"file": path.name, "rows": rows, "rejected": len(rejects), "no_lesion": n_no_lesion,
            "sha256": sha256, "seconds": None if seconds is None else round(seconds, 3),
            "rejects": rejects}


def _existing_entry(path: Path, plan: ShardPlan, config: RunConfig, old: dict, *, overwrite: bool) -> dict | None:
    """The manifest entry of a finished shard that can be kept, or None if it must be redone.

    A shard of another configuration is an error, or deleted (and redone) with ``overwrite``.
    """
    digest = None
    try:
        with ShardReader(path) as shard:
            attrs = shard.attrs
            stale = attrs.get("config_hash") != config.hash
            if stale and not overwrite:
                raise ShardError(f"{path}: made with another configuration (config_hash "
                                 f"{attrs.get('config_hash')} != {config.hash}); use a new --out folder or "
                                 "--overwrite")
            if not stale and attrs.get("ids_hash") != ids_hash(plan.ids):
                log.info("%s: the data changed since it was written; redoing it", path)
                return None
            if not stale:
                digest = sha256_file(path)
                if not _same_inputs_and_intact(path, shard, plan, old.get(path.name), digest):
                    return None
            rows, rejects = len(shard), shard.rejects
            n_no_lesion = int(shard.column("no_lesion").sum()) if rows else 0
    except ShardError as exc:
        if "another configuration" in str(exc):
            raise
        log.warning("%s; redoing it", exc)
        return None
    if stale:  # --overwrite: remove it now, so a failed redo cannot leave the old configuration's shard behind
        path.unlink()
        return None
    seconds = old.get(path.name, {}).get("seconds")
    return _entry(path, rows, rejects, seconds=seconds, n_no_lesion=n_no_lesion, sha256=digest)


def _same_inputs_and_intact(path: Path, shard: ShardReader, plan: ShardPlan, entry: dict | None,
                            digest: str) -> bool:
    """True when ``shard`` was made from exactly these input files and its bytes are whole.

    A shard is reused only when its ``inputs_hash`` matches the files now planned for it (same ids, paths and
    bytes) and its bytes are whole: its sha256 (``digest``) matches ``manifest.json`` when listed there, else
    every chunk passes its fletcher32 checksum (a matching sha256 already proves the bytes as written).
    Otherwise it is redone; a damaged shard is never re-blessed with a new sha256.
    """
    recorded = shard.attrs.get("inputs_hash")
    if not recorded:
        log.warning("%s: made by an older edgedino that did not record its input files; redoing it", path)
        return False
    if recorded != inputs_hash(plan.samples):
        log.warning("%s: made from other input files (same ids, other paths or contents); redoing it", path)
        return False
    if entry is not None:
        if entry.get("sha256") != digest:
            log.warning("%s: sha256 differs from manifest.json (damaged or replaced); redoing it", path)
            return False
        return True
    try:
        _read_every_chunk(shard._file)
    except (OSError, ValueError) as exc:
        log.warning("%s: a chunk fails its checksum (%s); redoing it", path, exc)
        return False
    return True


def _clean_partials(out_dir: Path) -> None:
    """Remove temporary files a killed run left (shards, manifest, rejects: all written as ``.*.partial``)."""
    for stale in out_dir.glob(".*.partial"):
        stale.unlink(missing_ok=True)


def run_pseudomasks(data: Sequence[str | Path] | str | Path, out_dir: str | Path, *, config: RunConfig = RunConfig(),
                    jobs: int = 1, backend: str = "loky", scheduler: str | None = None,
                    overwrite: bool = False, progress: bool = True,
                    exclude_ids: Iterable[str] = ()) -> RunSummary:
    """Make pseudo-masks for every image in ``data`` and write HDF5 shards to ``out_dir``.

    Parameters
    ----------
    data : path or sequence of paths
        Data folders (see ``common.datasets``).
    out_dir : path
        Shards, ``manifest.json`` and ``rejects.jsonl`` go here. Rerunning resumes.
    config : RunConfig
        What decides the content of the shards.
    jobs : int
        Parallel workers (``-1``: all cores).
    backend : {'loky', 'dask'}
        joblib's loky processes on this machine, or a Dask cluster (``scheduler`` address; a
        ``LocalCluster`` with ``jobs`` workers when None).
    overwrite : bool
        Delete shards made with another configuration instead of refusing to mix them.
    exclude_ids : iterable of str
        Ids to leave out (e.g. the images of an external test set).

    Raises
    ------
    GuardError
        ``out_dir`` overlaps a data folder, is not a writable folder, or another run holds its lock.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    inputs = [data] if isinstance(data, (str, Path)) else data
    out_dir = check_out_dir(out_dir, inputs)
    dataset = datasets.open_dataset(data)  # before creating out_dir: a missing data folder leaves nothing behind
    present = [p.name for p in find_shards(out_dir)] if out_dir.is_dir() else []  # foreign: refused before the lock
    with output_folder(out_dir, command="pseudomasks", names=[MANIFEST, REJECTS, *present], inputs=inputs) as ledger:
        return _run_locked(dataset, data, out_dir, ledger, config=config, jobs=jobs, backend=backend,
                           scheduler=scheduler, overwrite=overwrite, progress=progress, exclude_ids=exclude_ids)


def _run_locked(dataset: datasets.Dataset, data, out_dir: Path, ledger: Ledger, *, config: RunConfig, jobs: int,
                backend: str, scheduler: str | None, overwrite: bool, progress: bool,
                exclude_ids: Iterable[str]) -> RunSummary:
    """:func:`run_pseudomasks` once ``out_dir`` is checked and locked (``ledger``: the files runs wrote there)."""
    _clean_partials(out_dir)
    excluded = set(exclude_ids)
    if excluded:
        kept = tuple(s for s in dataset.samples if s.id not in excluded)
        log.info("left out %d image(s) whose ids are excluded", len(dataset.samples) - len(kept))
        dataset = dataclasses.replace(dataset, samples=kept)
    plans = plan_shards(dataset, config.shard_size)
    planned = {p.name for p in plans}
    present = [path.name for path in find_shards(out_dir)]
    # shards no run wrote here are neither replaced nor removed (nor mixed into this run's data)
    ledger.claim(sorted(planned | set(present)), overwrite_flag=None)
    old = {e["file"]: e for e in read_manifest(out_dir).get("shards", [])}
    for path in find_shards(out_dir):
        if path.name not in planned:
            log.warning("%s is not part of this run's plan (data or shard size changed); removing it", path)
            path.unlink()
    entries, todo = {}, []
    for plan in plans:
        path = out_dir / plan.name
        entry = _existing_entry(path, plan, config, old, overwrite=overwrite) if path.exists() else None
        if entry is None:
            todo.append(plan)
        else:
            entries[plan.name] = entry
    n_resumed = len(entries)
    if n_resumed:
        log.info("resuming: %d of %d shard(s) already done", n_resumed, len(plans))
    extra = {"config": json.loads(config.to_json()), "config_hash": config.hash,
             "data": [str(Path(d)) for d in ([data] if isinstance(data, (str, Path)) else data)]}

    def record(entry: dict) -> None:
        entries[entry["file"]] = entry
        _write_outputs(out_dir, entries, extra)

    start = time.perf_counter()
    total = sum(len(p.samples) for p in todo)
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="pseudo-masks", unit="img", disable=not progress or not total) as bar:
        for entry in _execute(todo, out_dir, config, jobs=jobs, backend=backend, scheduler=scheduler,
                              on_images=bar.update):
            record(entry)
    _write_outputs(out_dir, entries, extra)
    rejects = [r for name in sorted(entries) for r in entries[name]["rejects"]]
    return RunSummary(out_dir=out_dir, n_shards=len(plans), n_samples=sum(e["rows"] for e in entries.values()),
                      n_rejected=len(rejects), n_resumed_shards=n_resumed,
                      n_no_lesion=sum(e.get("no_lesion", 0) for e in entries.values()),
                      seconds=time.perf_counter() - start, rejects=rejects)


def _write_outputs(out_dir: Path, entries: dict[str, dict], extra: dict) -> None:
    write_manifest(out_dir, [{k: v for k, v in e.items() if k != "rejects"} for e in entries.values()], extra)
    lines = [json.dumps(r) for name in sorted(entries) for r in entries[name]["rejects"]]
    write_text(out_dir / REJECTS, "".join(line + "\n" for line in lines))


def _execute(plans: list[ShardPlan], out_dir: Path, config: RunConfig, *, jobs: int, backend: str,
             scheduler: str | None, on_images=lambda n: None):
    """Yield manifest entries as shards finish, in whatever order they finish; ``on_images(n)`` is called as
    images finish (per image on this machine, per shard with Dask), from the run's own thread."""
    if not plans:
        return
    if backend == "dask":
        for entry in _execute_dask(plans, out_dir, config, jobs=jobs, scheduler=scheduler):
            on_images(entry["rows"] + entry["rejected"])
            yield entry
        return
    jobs = cap_jobs(jobs, sum(len(plan.samples) for plan in plans))
    if jobs == 1:
        for plan in plans:
            yield process_shard(plan, out_dir, config, on_images=on_images)
        return
    yield from _execute_local(plans, out_dir, config, jobs=jobs, on_images=on_images)


def _execute_local(plans: list[ShardPlan], out_dir: Path, config: RunConfig, *, jobs: int, on_images):
    """``jobs`` processes on this machine: this one and ``jobs - 1`` loky workers, one image per task.

    The run's own process works too instead of waiting: it starts on the first image at once, while the
    workers are still importing (about 0.7 s), and on a 2-core machine two jobs are this process and one
    worker, not two workers beside an idle parent. Workers are fed from a done-callback and always hold their
    next image, so none waits for this process to finish its own. Each shard is written, in plan order, as soon as all its images
    are back; every image is computed by :func:`try_sample` in one thread, so the shards are the same bytes
    whoever computed each image.
    """
    import threading
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait

    from joblib.externals.loky import ProcessPoolExecutor

    samples = [(k, sample) for k, plan in enumerate(plans) for sample in plan.samples]
    todo = deque(range(len(samples)))
    results: dict[int, tuple[ShardRecord | dict, str]] = {}
    failures: list[tuple[int, BaseException]] = []
    in_flight: set = set()
    lock = threading.RLock()  # a callback may run at once, inside feed()
    # its own pool, not loky's process-wide reusable one, which joblib's Parallel (synth) also takes
    executor = ProcessPoolExecutor(max_workers=jobs - 1)
    owner = os.getpid()

    def feed() -> None:  # under ``lock``: each worker has its image and the next (no wait between images)
        while todo and len(in_flight) < 2 * (jobs - 1) and not failures:
            i = todo.popleft()
            future = executor.submit(hashed_sample, samples[i][1], config, owner)
            future.index = i
            in_flight.add(future)
            future.add_done_callback(collect)

    def collect(future) -> None:
        with lock:
            in_flight.discard(future)
            if future.cancelled():
                return
            if future.exception() is not None:
                failures.append((future.index, future.exception()))
                return
            results[future.index] = future.result()
            feed()

    ends = np.cumsum([len(plan.samples) for plan in plans])
    next_plan, first, start, by_me = 0, 0, time.perf_counter(), 0
    reported = 0  # images reported to ``on_images``
    try:
        with lock:
            feed()
        while True:
            with lock:
                mine = todo.popleft() if todo and not failures else None
            if mine is not None:
                result = hashed_sample(samples[mine][1], config)
                by_me += 1
                with lock:
                    results[mine] = result
            elif in_flight:
                wait(list(in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
            with lock:  # images back: those of the shards written, and those waiting in ``results``
                now = first + len(results)
            if now > reported:
                on_images(now - reported)
                reported = now
            if failures:
                i, exc = failures[0]
                if isinstance(exc, ParentGone):
                    raise exc
                raise WorkerDied(f"{samples[i][1].image}: the worker process working on this image stopped "
                                 f"({type(exc).__name__}: killed, out of memory, or a crash in a library); the "
                                 "shards written so far are kept: rerun the same command to resume") from exc
            while next_plan < len(plans) and all(i in results for i in range(first, ends[next_plan])):
                done, parts = zip(*[results.pop(i) for i in range(first, ends[next_plan])])
                yield write_planned_shard(plans[next_plan], out_dir, config, done, time.perf_counter() - start,
                                          parts=parts)
                first, next_plan, start = int(ends[next_plan]), next_plan + 1, time.perf_counter()
            if next_plan == len(plans):
                log.debug("%d of %d image(s) processed by the run's own process, the rest by %d worker(s)",
                          by_me, len(samples), jobs - 1)
                return
    finally:
        with lock:
            finished = not todo and not in_flight
            todo.clear()
            for future in list(in_flight):
                future.cancel()
        executor.shutdown(wait=finished, kill_workers=not finished)


def _execute_dask(plans, out_dir, config, *, jobs, scheduler):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise RuntimeError("--backend dask needs the 'dask' extra: pip install -e '.[dask]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=cap_jobs(jobs, len(plans)), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(process_shard, plans, out_dir=str(out_dir), config=config, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
