"""Stream the pseudo-mask shards into training: a lazy map-style dataset and a shard-aware sampler.

Each DataLoader worker opens the HDF5 files itself on first use (h5py handles must not cross ``fork``),
and the sampler visits shards in a shuffled order, rows shuffled inside each shard, so a worker reads
one file at a time.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.shards import ShardError, ShardReader, shards_to_read

MAP_CHANNELS = ("pseudo_mask", "prob", "hair_mask")


class ShardDataset(Dataset):
    """Samples of one or more pseudo-mask shards at storage resolution.

    Parameters
    ----------
    shards : path or sequence of paths
        Shard files or folders of shards (``pipeline.shards`` schema).
    exclude_ids : iterable of str
        Ids to leave out (the leakage guard: images of an external test set).
    min_confidence : float
        Leave out samples whose pseudo-mask confidence (``diag/confidence``, in [0, 1]) is below this; 0 keeps
        all. Shards written before the confidence existed have none (NaN): their samples are kept, counted in
        ``n_unscored``.

    Items are dicts of
    ``image`` (3, S, S) uint8, ``maps`` (3, S, S) uint8 — pseudo-mask (0/255), walker probability (0-255) and
    hair mask (0/255) —, ``valid`` () float32 (0 when no lesion could be seeded; in a self-training round's shards
    the sample's ``diag/train_weight``, its confidence-based weight) and ``index`` () int64.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path], *, exclude_ids: Iterable[str] = (),
                 min_confidence: float = 0.0):
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence: expected a value in [0, 1], got {min_confidence}")
        sources = [shards] if isinstance(shards, (str, Path)) else list(shards)
        self.paths: list[Path] = [p for s in sources for p in shards_to_read(s)]
        if not self.paths:
            raise ShardError(f"{', '.join(map(str, sources))}: no shard files (shard-*.h5); run 'pseudomasks' first")
        excluded = set(exclude_ids)
        rows, ids, sizes = [], [], set()
        self.n_excluded = self.n_low_confidence = self.n_unscored = 0
        for k, path in enumerate(self.paths):
            with ShardReader(path) as shard:
                sizes.add(int(shard.attrs["size"]))
                confidence = shard.confidence() if min_confidence > 0 else None
                for r, sample_id in enumerate(shard.ids):
                    if sample_id in excluded:
                        self.n_excluded += 1
                        continue
                    if confidence is not None and np.isnan(confidence[r]):
                        self.n_unscored += 1
                    elif confidence is not None and confidence[r] < min_confidence:
                        self.n_low_confidence += 1
                        continue
                    rows.append((k, r))
                    ids.append(sample_id)
        if len(sizes) > 1:
            raise ShardError(f"shards of different storage sizes {sorted(sizes)} cannot be mixed: "
                             f"{', '.join(map(str, self.paths))}")
        if not rows:
            raise ShardError(f"{', '.join(map(str, sources))}: the shards hold no usable samples")
        self.size = sizes.pop()
        self.rows = np.asarray(rows, dtype=np.int64)
        self.ids = ids
        self._files: dict[int, ShardReader] = {}
        self._pid: int | None = None

    def without(self, ids: Iterable[str]) -> "ShardDataset":
        """A copy of this dataset with the samples of ``ids`` left out (counted in ``n_excluded``), without
        reading the shards again (e.g. the linear probe's held-out images)."""
        drop = set(ids)
        keep = [i for i, sample_id in enumerate(self.ids) if sample_id not in drop]
        if not keep:
            raise ShardError(f"{', '.join(map(str, self.paths))}: the shards hold no usable samples")
        subset = copy.copy(self)
        subset.rows = self.rows[keep]
        subset.ids = [self.ids[i] for i in keep]
        subset.n_excluded = self.n_excluded + len(self.ids) - len(keep)
        subset._files, subset._pid = {}, None
        return subset

    def has_lesion(self) -> np.ndarray:
        """``(N,) bool``: whether each sample's pseudo-mask has a lesion (its ``valid``), from the shards'
        ``no_lesion`` columns alone (no image is read)."""
        no_lesion = {}
        for k in np.unique(self.rows[:, 0]):
            with ShardReader(self.paths[int(k)]) as shard:
                no_lesion[int(k)] = shard.column("no_lesion").astype(bool)
        return np.array([not no_lesion[int(k)][r] for k, r in self.rows], dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def _reader(self, k: int) -> ShardReader:
        if self._pid != os.getpid():  # a fresh worker process: never reuse the parent's handles
            self._files, self._pid = {}, os.getpid()
        if k not in self._files:
            self._files[k] = ShardReader(self.paths[k])
        return self._files[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, r = self.rows[index]
        f = self._reader(int(k))._file
        try:
            image = torch.from_numpy(f["image"][r]).permute(2, 0, 1).contiguous()
            maps = np.stack([f["pseudo_mask"][r] * np.uint8(255), f["prob"][r], f["hair_mask"][r] * np.uint8(255)])
            no_lesion = f["no_lesion"][r]
            weight = float(f["diag/train_weight"][r]) if "diag/train_weight" in f else 1.0
        except OSError as exc:  # a chunk failing its fletcher32 checksum, a truncated file
            raise ShardError(f"{self.paths[int(k)]}: sample {int(r)} cannot be read ({exc}); check the folder with "
                             "'verify' and rerun 'pseudomasks' to redo the shard") from None
        return {"image": image, "maps": torch.from_numpy(maps),
                "valid": torch.tensor(0.0 if no_lesion else weight), "index": torch.tensor(index)}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None
        return state

    def shard_of(self) -> np.ndarray:
        """(N,) the shard number of every row, for ``ShardAwareSampler``."""
        return self.rows[:, 0]


class ShardAwareSampler(Sampler[int]):
    """Shuffle shard order, then rows within each shard; split the stream across distributed ranks.

    Deterministic from ``(seed, epoch)``; call ``set_epoch`` each epoch as with ``DistributedSampler``.
    Every rank gets the same number of indices (the stream is padded by wrapping, like
    ``DistributedSampler(drop_last=False)``).
    """

    def __init__(self, dataset: ShardDataset, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.shard = dataset.shard_of()
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0
        self.per_rank = -(-len(self.shard) // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.shard)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        blocks = [np.flatnonzero(self.shard == k) for k in np.unique(self.shard)]
        order = [rng.permutation(blocks[i]) for i in rng.permutation(len(blocks))]
        return np.concatenate(order)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        total = self.per_rank * self.world_size
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        # Contiguous slices keep each rank on few shards at a time.
        mine = order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        return iter(mine.tolist())

    def __len__(self) -> int:
        return self.per_rank
