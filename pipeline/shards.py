"""HDF5 shards: the contract between the pseudo-mask stage and the trainer (schema version 1).

A shard holds a few hundred samples at the storage resolution S x S (every image squashed, aspect ratio not
kept; ``orig_shape`` maps back by a plain resize). Layout, one sample per chunk (the small per-sample columns:
one chunk each), fletcher32 on every dataset,
gzip on the masks and probability, so h5ls/h5dump/HDFView read it without plugins:

============== ============== ======= ==============================================
dataset        shape          dtype   meaning
============== ============== ======= ==============================================
image          (N, S, S, 3)   uint8   hair-removed RGB
hair_mask      (N, S, S)      uint8   1 where hair was found
prob           (N, S, S)      uint8   walker lesion probability x 255
pseudo_mask    (N, S, S)      uint8   1 inside the pseudo-mask
id             (N,)           str     image id (file stem)
path           (N,)           str     the source image file
orig_shape     (N, 2)         int32   original (H, W)
no_lesion      (N,)           uint8   1 when no lesion could be seeded (empty mask)
diag/<name>    (N,)           float32 per-sample diagnostics (``diag/confidence``: pseudo-mask confidence)
============== ============== ======= ==============================================

Optional maps (:data:`OPTIONAL_MAPS`), written by ``relabel`` into a self-training round's shards: ``model_prob``
(N, S, S) uint8, the student's lesion probability x 255, and ``walker_mask`` (N, S, S) uint8, stage 1's own
pseudo-mask (``pseudo_mask`` there is the per-image choice); their ``diag/`` adds ``agreement``,
``walker_confidence``, ``model_weight``, ``source`` and ``train_weight`` (trainer/inference/relabel.py).

File attributes: ``schema_version``, ``config`` (JSON), ``config_hash``, ``ids_hash`` (the planned ids),
``inputs_hash`` (ids, paths and bytes of the input files: a resume redoes a shard whose inputs changed),
``rejects`` (JSON list of the inputs this shard skipped), ``versions`` (JSON). Nothing time-dependent is
stored, so the same inputs and config give byte-identical shards (checked by sha256 in ``manifest.json``).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import h5py
import numpy as np

from common.atomic import atomic_path, write_text
from common.datasets import MAX_PIXELS, MAX_SIDE, ImageReadError, image_size
from common.guard import (
    MAX_ID_BYTES,
    GuardError,
    bounded_number,
    check_not_being_written,
    check_plain_name,
    sha256_file,
)

SCHEMA_VERSION = 1
SHARD_GLOB = "shard-*.h5"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
MASK_KEYS = ("hair_mask", "prob", "pseudo_mask")
OPTIONAL_MAPS = ("model_prob", "walker_mask")
#: Bounds a shard's own numbers must keep before anything is sized from them (a crafted or damaged file):
MAX_ROWS = 100_000        # samples in one shard ('pseudomasks --shard-size' stops here too)
MAX_STORAGE_SIZE = 4096   # S, the storage resolution ('pseudomasks --size' stops here too)
MAX_PATH_BYTES = 4096     # a source image path


class ShardError(GuardError):
    """A shard that cannot be used; the message names the file and what is wrong (a ``ValueError``)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardRecord:
    """One processed sample, at storage resolution S x S."""

    id: str
    path: str
    orig_shape: tuple[int, int]
    image: np.ndarray        # (S, S, 3) uint8
    hair_mask: np.ndarray    # (S, S) bool
    prob: np.ndarray         # (S, S) float32 in [0, 1]
    pseudo_mask: np.ndarray  # (S, S) bool
    no_lesion: bool
    diagnostics: dict[str, float]
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)  # optional (S, S) maps of OPTIONAL_MAPS


def write_shard(path: Path, records: Sequence[ShardRecord], *, size: int, config_json: str, config_hash: str,
                planned_ids: Sequence[str], rejects: Sequence[dict], versions: dict[str, str],
                inputs_hash: str = "") -> str:
    """Write ``records`` to ``path`` atomically (``*.partial`` then rename); return the file's sha256 (hex).

    Parameters
    ----------
    records : sequence of ShardRecord
        May be empty (every planned input rejected): the shard still records that it is done.
    size : int
        Storage resolution S.
    planned_ids : sequence of str
        Every id this shard was planned to hold, kept or rejected (resume checks it).
    rejects : sequence of dict
        ``{"id", "path", "reason"}`` per rejected input.
    inputs_hash : str
        What the shard was made from (``common.guard.inputs_hash``: ids, paths, file bytes); resume checks it.
    """
    n, s = len(records), size
    diag_keys = sorted({k for r in records for k in r.diagnostics})
    with atomic_path(path) as tmp:
        # HDF5 writes into a BytesIO (h5py's file-object driver); Python then writes the file. A full disk is then
        # one clean OSError: HDF5 failing to write its own file ended in a flood of errors and a segfault at exit.
        # Not the core driver: its buffer is not zeroed, so gaps HDF5 never writes held whatever memory held, and
        # shards stopped being byte-identical across processes. A BytesIO fills such gaps with zeros, as a file.
        image = io.BytesIO()
        # No chunk cache and one sample per write: each chunk is allocated as it is written, in sample order.
        # With a cache, HDF5 allocates the dirty chunks when it flushes them, in an order that varied between
        # processes (same data, chunks at other offsets: shards not byte-identical 1 run in 8).
        with h5py.File(image, "w", track_order=True, rdcc_nbytes=0) as f:
            def dataset(name, shape, dtype, data, chunk, gzip=False):
                kwargs = dict(shape=shape, dtype=dtype, fletcher32=True, track_times=False)
                if n:
                    kwargs["chunks"] = chunk
                if n and gzip:
                    kwargs.update(compression="gzip", compression_opts=4, shuffle=False)
                ds = f.create_dataset(name, **kwargs)
                for i in range(n):
                    ds[i] = data[i]
                return ds

            dataset("image", (n, s, s, 3), np.uint8,
                    np.stack([r.image for r in records]) if n else None, (1, s, s, 3))
            dataset("hair_mask", (n, s, s), np.uint8,
                    np.stack([r.hair_mask for r in records]).astype(np.uint8) if n else None, (1, s, s), True)
            dataset("prob", (n, s, s), np.uint8,
                    np.stack([quantise_prob(r.prob) for r in records]) if n else None, (1, s, s), True)
            dataset("pseudo_mask", (n, s, s), np.uint8,
                    np.stack([r.pseudo_mask for r in records]).astype(np.uint8) if n else None, (1, s, s), True)
            for name in _optional_maps(records):
                dataset(name, (n, s, s), np.uint8, np.stack([_as_uint8(name, r.maps[name]) for r in records]),
                        (1, s, s), True)
            _fixed_text(f, "id", [r.id for r in records])
            _fixed_text(f, "path", [r.path for r in records])
            _checked(f, "orig_shape", np.array([r.orig_shape for r in records], np.int32).reshape(n, 2))
            _checked(f, "no_lesion", np.array([r.no_lesion for r in records], np.uint8))
            group = f.create_group("diag", track_order=True)
            for key in diag_keys:
                _checked(group, key, np.array([r.diagnostics.get(key, np.nan) for r in records], np.float32))
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["size"] = size
            f.attrs["n_planned"] = len(planned_ids)
            for key, text in (("config", config_json), ("config_hash", config_hash),
                              ("ids_hash", ids_hash(planned_ids)), ("inputs_hash", inputs_hash),
                              ("rejects", json.dumps(list(rejects))),
                              ("versions", json.dumps(versions, sort_keys=True))):
                f.attrs[key] = np.bytes_(text.encode())  # fixed-length: see _fixed_text
        data = image.getvalue()
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()  # as sha256_file(path), without reading the file back


def _optional_maps(records: Sequence[ShardRecord]) -> list[str]:
    """The optional maps the records carry: every record the same ones, all of :data:`OPTIONAL_MAPS`."""
    names = [n for n in OPTIONAL_MAPS if records and n in records[0].maps]
    unknown = {k for r in records for k in r.maps} - set(OPTIONAL_MAPS)
    if unknown or any(sorted(r.maps) != sorted(names) for r in records):
        raise ValueError(f"shard records: optional maps must be the same for every record and among "
                         f"{OPTIONAL_MAPS}; got {sorted({k for r in records for k in r.maps})}")
    return names


def _as_uint8(name: str, data: np.ndarray) -> np.ndarray:
    """An optional map as stored: a probability (float in [0, 1]) quantised, a mask 0/1."""
    if name.endswith("_prob"):
        return quantise_prob(data)
    return np.asarray(data, bool).astype(np.uint8)


def _checked(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """A small per-sample dataset with a fletcher32 checksum (which needs chunks, hence none when empty)."""
    kwargs = dict(chunks=data.shape, fletcher32=True) if len(data) else {}
    group.create_dataset(name, data=data, track_times=False, **kwargs)


def _fixed_text(f: h5py.File, name: str, values: list[str]) -> None:
    """A fixed-length string dataset (UTF-8 bytes) with a fletcher32 checksum. Variable-length strings live in
    HDF5's global heap, whose padding is written from uninitialised memory: the file bytes would then differ
    between processes."""
    data = [v.encode() for v in values]
    length = max([len(d) for d in data] + [1])
    _checked(f, name, np.array(data, dtype=f"S{length}").reshape(len(data)))


def _text(value) -> object:
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else value


def quantise_prob(prob: np.ndarray) -> np.ndarray:
    """``(S, S) float in [0, 1] -> (S, S) uint8`` (x 255, rounded)."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


class ShardReader:
    """Read one shard lazily; checks the schema version on open.

    >>> with ShardReader(path) as shard:        # doctest: +SKIP
    ...     sample = shard[0]                   # dict of numpy arrays
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise ShardError(f"{self.path}: not a readable HDF5 shard ({exc})") from None
        version = _text(self._file.attrs.get("schema_version"))
        version = int(version) if version is not None else None
        if version != SCHEMA_VERSION:
            self._file.close()
            raise ShardError(f"{self.path}: schema version {version!r}, this edgedino reads version "
                             f"{SCHEMA_VERSION}; rerun 'pseudomasks' to rebuild the shards")
        missing = [k for k in ("image", *MASK_KEYS, "id", "path", "orig_shape", "no_lesion") if k not in self._file]
        if missing:
            self._file.close()
            raise ShardError(f"{self.path}: missing datasets {missing}")
        try:
            self._check_fields()
        except (ShardError, GuardError) as exc:
            self._file.close()
            raise ShardError(str(exc)) from None

    def _check_fields(self) -> None:
        """Bounds-check what the file says about itself before anything is sized from it: one row count shared
        by every dataset (at most :data:`MAX_ROWS`), ``image`` of ``(N, S, S, 3)`` with S the ``size`` attribute
        (at most :data:`MAX_STORAGE_SIZE`), masks of ``(N, S, S)``, every ``orig_shape`` a plausible image size
        (:func:`check_orig_shape`), every id a plain printable file name, text columns of bounded width."""
        f, where = self._file, self.path
        n = bounded_number(f["id"].shape[0] if f["id"].ndim == 1 else -1, lo=0, hi=MAX_ROWS, what="the row count",
                        source=where)
        size = f["image"].shape[1] if f["image"].ndim == 4 else -1
        bounded_number(size, lo=1, hi=MAX_STORAGE_SIZE, what="the storage size S", source=where)
        if "size" in f.attrs and _number(f.attrs["size"]) != size:
            raise ShardError(f"{where}: the size attribute {f.attrs['size']!r} differs from the images' {size} px")
        expected = {"image": (n, size, size, 3), **{k: (n, size, size) for k in MASK_KEYS}, "orig_shape": (n, 2)}
        expected.update({"path": (n,), "no_lesion": (n,)})
        expected.update({k: (n, size, size) for k in OPTIONAL_MAPS if k in f})
        if "diag" in f:
            expected.update({f"diag/{k}": (n,) for k in f["diag"]})
        for name, shape in expected.items():
            if f[name].shape != shape:
                raise ShardError(f"{where}: dataset {name!r} has shape {f[name].shape}, expected {shape} "
                                 f"({n} row(s) of {size} px)")
        for name, limit in (("id", MAX_ID_BYTES), ("path", MAX_PATH_BYTES)):
            if name in f and (f[name].dtype.kind not in "SOU" or f[name].dtype.itemsize > limit):
                raise ShardError(f"{where}: dataset {name!r} is {f[name].dtype}; expected text of at most {limit} "
                                 "bytes")
        if f["orig_shape"].dtype.kind not in "iu":
            raise ShardError(f"{where}: orig_shape is {f['orig_shape'].dtype}; expected whole numbers")
        try:
            ids = self.ids
        except UnicodeDecodeError:
            raise ShardError(f"{where}: an id is not valid UTF-8 text") from None
        for sample_id in ids:
            check_plain_name(sample_id, source=where)
        for sample_id, shape in zip(ids, self.column("orig_shape")):
            check_orig_shape(shape, where=f"{where}: {sample_id}")

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return int(self._file["id"].shape[0])

    @property
    def attrs(self) -> dict:
        return {k: _text(v) for k, v in self._file.attrs.items()}

    @property
    def config(self) -> dict:
        return json.loads(_text(self._file.attrs["config"]))

    @property
    def rejects(self) -> list[dict]:
        return json.loads(_text(self._file.attrs.get("rejects", "[]")))

    @property
    def ids(self) -> list[str]:
        return [_text(x) for x in self.column("id")]

    @property
    def sources(self) -> list[str]:
        """Each sample's source image file (``path``)."""
        return [_text(x) for x in self.column("path")]

    def column(self, name: str) -> np.ndarray:
        """A whole per-sample column (``orig_shape``, ``no_lesion``, ``diag/<name>``)."""
        try:
            return self._file[name][...]
        except OSError as exc:  # a chunk failing its fletcher32 checksum
            raise ShardError(f"{self.path}: dataset {name!r} cannot be read ({exc}); the shard is damaged: check "
                             "the folder with 'verify' and rerun 'pseudomasks' to redo it") from None

    def confidence(self) -> np.ndarray:
        """``(N,) float32`` pseudo-mask confidence in [0, 1] (``diag/confidence``); NaN for shards written
        before it existed."""
        if "diag" in self._file and "confidence" in self._file["diag"]:
            return self._file["diag/confidence"][...].astype(np.float32)
        return np.full(len(self), np.nan, np.float32)

    @property
    def diagnostics(self) -> dict[str, np.ndarray]:
        return {k: v[...] for k, v in self._file["diag"].items()}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        try:
            return self._sample(i)
        except OSError as exc:  # a chunk failing its fletcher32 checksum
            raise ShardError(f"{self.path}: sample {i} cannot be read ({exc}); the shard is damaged: check the "
                             "folder with 'verify' and rerun 'pseudomasks' to redo it") from None

    def _sample(self, i: int) -> dict[str, np.ndarray]:
        f = self._file
        return {
            "id": _text(f["id"][i]),
            "path": _text(f["path"][i]),
            "orig_shape": f["orig_shape"][i],
            "image": f["image"][i],
            "hair_mask": f["hair_mask"][i],
            "prob": f["prob"][i],
            "pseudo_mask": f["pseudo_mask"][i],
            "no_lesion": bool(f["no_lesion"][i]),
            **{name: f[name][i] for name in OPTIONAL_MAPS if name in f},
        }

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]


def _number(value) -> object:
    return value.item() if isinstance(value, np.generic) else value


def check_orig_shape(shape, *, where: str | Path, image: str | Path | None = None) -> tuple[int, int]:
    """``(H, W)`` of a shard row when it is a plausible image size, else :class:`ShardError` naming ``where``.

    Each side in ``[1, MAX_SIDE]`` and ``H * W`` at most ``MAX_PIXELS`` (the largest image stage 1 reads,
    :mod:`common.datasets`). With ``image`` (the row's source file) when it still exists, the size must also be
    the one its header gives: the mask is made for that image. Checked before a mask is resized to it.
    """
    values = [_number(v) for v in np.asarray(shape).reshape(-1)]
    if len(values) != 2:
        raise ShardError(f"{where}: orig_shape {values} is not (height, width)")
    height, width = (bounded_number(v, lo=1, hi=MAX_SIDE, what=f"orig_shape {side}", source=where)
                     for v, side in zip(values, ("height", "width")))
    if height * width > MAX_PIXELS:
        raise ShardError(f"{where}: orig_shape {height} x {width} is {height * width:,} pixels; the largest image "
                         f"edgedino reads has {MAX_PIXELS:,} (the shard is damaged or was not written by edgedino)")
    if image is not None and Path(image).is_file():
        try:
            recorded = image_size(Path(image))
        except ImageReadError:
            return height, width
        if recorded != (height, width):
            raise ShardError(f"{where}: orig_shape {height} x {width} differs from its image {image} "
                             f"({recorded[0]} x {recorded[1]}); the shard is damaged or the image was replaced: "
                             "rerun 'pseudomasks'")
    return height, width


def shards_to_read(path: str | Path) -> list[Path]:
    """:func:`find_shards` for a command that reads the shards' data (pretrain, finetune's pool, export, inspect,
    the table): refuses (:class:`~common.guard.GuardError`) a folder whose ``pseudomasks`` run is still alive,
    since its manifest lists the shards as they finish and a reader would see part of the data."""
    if Path(path).exists():
        check_not_being_written(path)
    return find_shards(path)


def find_shards(path: str | Path) -> list[Path]:
    """Shard files at ``path`` (a shard file or a folder of shards), sorted; ``*.partial`` never included."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such shard file or folder")
    return sorted(path.glob(SHARD_GLOB))


def write_manifest(out_dir: Path, entries: Sequence[dict], extra: dict | None = None) -> None:
    """Write ``manifest.json``: one entry per shard (``file``, ``rows``, ``rejected``, ``sha256``...)."""
    body = {"schema_version": SCHEMA_VERSION, **(extra or {}),
            "shards": sorted(entries, key=lambda e: e["file"])}
    write_text(Path(out_dir) / MANIFEST, json.dumps(body, indent=2) + "\n")


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"shards": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from None


def verify(out_dir: str | Path) -> list[str]:
    """Re-hash every shard against ``manifest.json`` and read every chunk (fletcher32 checks each).

    Returns
    -------
    list of str
        One line per problem; empty when all is well.

    Raises
    ------
    GuardError
        The folder's ``pseudomasks`` run is still going.
    """
    out_dir = Path(out_dir)
    check_not_being_written(out_dir)  # a run still writing it would show as mismatches
    if not (out_dir / MANIFEST).exists():
        return [f"{out_dir / MANIFEST}: missing (is {out_dir} a pseudomasks output folder?)"]
    problems = []
    listed = {e["file"]: e for e in read_manifest(out_dir)["shards"]}
    on_disk = {p.name for p in find_shards(out_dir)}
    for name in sorted(on_disk - listed.keys()):
        problems.append(f"{out_dir / name}: shard not listed in {MANIFEST}")
    for name, entry in sorted(listed.items()):
        path = out_dir / name
        if not path.exists():
            problems.append(f"{path}: listed in {MANIFEST} but missing")
            continue
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            problems.append(f"{path}: sha256 {digest[:12]}... differs from the manifest's {entry['sha256'][:12]}...")
        try:
            with ShardReader(path) as shard:
                if len(shard) != entry["rows"]:
                    problems.append(f"{path}: {len(shard)} rows, manifest says {entry['rows']}")
                _read_every_chunk(shard._file)
        except (ShardError, OSError, ValueError) as exc:
            problems.append(f"{path}: unreadable ({exc})")
    return problems


def _read_every_chunk(f: h5py.File) -> None:
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            if obj.chunks and obj.shape and obj.shape[0]:
                for i in range(obj.shape[0]):
                    obj[i]
            else:
                obj[...]
    f.visititems(visit)
