"""Who trains, who selects, who tests: deterministic splits, the FRAC label subset and the leakage guard."""
from __future__ import annotations

import functools
import hashlib
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from common.datasets import Dataset, Sample, read_image

log = logging.getLogger(__name__)

# A plain folder has no splits: each id goes by a hash of the id alone (stable when files are added).
PLAIN_VALIDATION_FRACTION = 0.15
PLAIN_TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Splits:
    train: tuple[Sample, ...]
    validation: tuple[Sample, ...]
    test: tuple[Sample, ...]
    n_excluded: int = 0


def _unit_hash(sample_id: str) -> float:
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:12], 16) / 16 ** 12


def split_dataset(dataset: Dataset, *, test: Dataset | None = None) -> Splits:
    """Split a labelled dataset into train / validation / test.

    - ISIC 2018 layout: its own Training / Validation / Test splits.
    - Plain folder: by a hash of each id, 15 % validation and 15 % test (``PLAIN_*_FRACTION``); the split of an
      id never changes when images are added.
    - ``test`` given (an external labelled folder): it is the test split; every id it holds is removed from
      train and validation (the leakage guard), and the count is reported.
    """
    samples = dataset.labelled
    if not samples:
        raise ValueError(f"{', '.join(map(str, dataset.roots))}: no labelled images (masks) to fine-tune on")
    has_splits = any(s.split for s in samples)
    if has_splits:
        train = [s for s in samples if s.split == "train"]
        val = [s for s in samples if s.split == "validation"]
        own_test = [s for s in samples if s.split == "test"]
    else:
        u = {s.id: _unit_hash(s.id) for s in samples}
        val = [s for s in samples if u[s.id] < PLAIN_VALIDATION_FRACTION]
        own_test = [s for s in samples if PLAIN_VALIDATION_FRACTION <= u[s.id]
                    < PLAIN_VALIDATION_FRACTION + PLAIN_TEST_FRACTION]
        train = [s for s in samples if u[s.id] >= PLAIN_VALIDATION_FRACTION + PLAIN_TEST_FRACTION]
    n_excluded = 0
    if test is not None:
        test_ids = set(test.ids)
        before = len(train) + len(val) + len(own_test)
        train = [s for s in train if s.id not in test_ids]
        val = [s for s in val if s.id not in test_ids]
        own_test = [s for s in own_test if s.id not in test_ids]
        n_excluded = before - len(train) - len(val) - len(own_test)
        # The data's own test split can train when an external test set is given.
        train = sorted(train + own_test, key=lambda s: s.id)
        test_samples = test.labelled
        if not test_samples:
            raise ValueError(f"{', '.join(map(str, test.roots))}: the test folder has no masks")
    else:
        test_samples = tuple(own_test)
    if not train:
        raise ValueError("no training images left after the split")
    return Splits(tuple(train), tuple(val), tuple(test_samples), n_excluded)


#: With no labelled validation image, this share of the labelled subset (at least 1) selects the iteration.
SELECTION_SHARE = 0.25
#: Fewer labels than this and none is held out for selection (the last iteration is kept).
MIN_FOR_SELECTION = 4


def selection_from_subset(subset: Sequence[Sample]) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """``(train, validation)`` from the labelled subset itself, for data whose validation images have no masks
    (a folder where only the images to train on were labelled, e.g. the ones ``advise`` chose).

    :data:`SELECTION_SHARE` of the subset (at least 1; the ids with the smallest hash, so the choice is stable)
    selects the iteration and does not train; with fewer than :data:`MIN_FOR_SELECTION` labels all train and the
    validation is empty.
    """
    subset = tuple(subset)
    if len(subset) < MIN_FOR_SELECTION:
        return subset, ()
    n_val = max(1, round(SELECTION_SHARE * len(subset)))
    held = set(sorted((s.id for s in subset), key=_unit_hash)[:n_val])
    return tuple(s for s in subset if s.id not in held), tuple(s for s in subset if s.id in held)


def labelled_subset(train: Sequence[Sample], frac: float, *, seed: int) -> tuple[Sample, ...]:
    """``frac`` of the training images, drawn with ``seed`` (at least one image).

    Raises
    ------
    ValueError
        ``frac`` outside (0, 1].
    """
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac} (0.01 means 1 % of the labelled training images)")
    n = round(frac * len(train))
    if n == 0:
        warnings.warn(f"frac {frac} of {len(train)} training images rounds to 0: using 1 image", stacklevel=2)
        n = 1
    order = np.random.default_rng(seed).permutation(len(train))
    return tuple(sorted((train[i] for i in order[:n]), key=lambda s: s.id))


def held_out_ids(dataset: Dataset) -> set[str]:
    """The ids :func:`split_dataset` keeps out of training (validation and test), labelled or not yet: the
    layout's own validation/test folders, else the id hash. ``advise`` leaves them out, so that the images it
    asks to label are ones ``finetune --labels-from`` can train on."""
    samples = dataset.samples
    if any(s.split for s in samples):
        return {s.id for s in samples if s.split in ("validation", "test")}
    return {s.id for s in samples if _unit_hash(s.id) < PLAIN_VALIDATION_FRACTION + PLAIN_TEST_FRACTION}


def listed_subset(splits: Splits, ids: Sequence[str], *, source: str = "the list") -> tuple[Sample, ...]:
    """The training images whose ids are listed (``finetune --labels-from``), in id order.

    Raises
    ------
    ValueError
        In one line: an empty list, ids of the test or validation split (labels there would leak into the score
        or the model selection), or ids not among the labelled training images.
    """
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        raise ValueError(f"{source}: no ids listed")
    by_id = {s.id: s for s in splits.train}
    held = [(i, "test") for i in wanted if i in {s.id for s in splits.test}]
    held += [(i, "validation") for i in wanted if i in {s.id for s in splits.validation}]
    if held:
        shown = ", ".join(f"{i} ({where})" for i, where in held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5
                                                                           else "")
        raise ValueError(f"{source}: {len(held)} listed id(s) are held out of training: {shown}; label images of the "
                         "training pool only")
    unknown = [i for i in wanted if i not in by_id]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{source}: {len(unknown)} listed id(s) are not labelled training images of the data: "
                         f"{shown}")
    return tuple(sorted((by_id[i] for i in wanted), key=lambda s: s.id))


def dhash(image: np.ndarray, size: int = 16) -> int:
    """Difference hash of an ``(H, W, 3) uint8`` image: ``size**2`` bits comparing horizontal neighbours on a
    ``(size + 1) x size`` grey thumbnail.

    Robust to resizing and JPEG re-compression; used to warn about the same photo under two ids. Measured on
    real ISIC images at 16 x 16 (256 bits): the same photo at full size vs its 256 px thumbnail differs in at
    most 9 bits (20 pairs), different photos in at least 32 (400 images, 80k pairs).
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (size + 1, size), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@functools.lru_cache(maxsize=100_000)
def _file_dhash(path: str) -> int:
    return dhash(read_image(path, min_long_side=64))


def near_duplicates(a: Sequence[Sample], b: Sequence[Sample], *, max_distance: int = 16
                    ) -> list[tuple[str, str, int]]:
    """Pairs ``(id_a, id_b, distance)`` of different ids whose dHashes differ in at most ``max_distance`` bits.

    Each file is hashed once per process (a table run checks the same files for every cell)."""
    hb = [(s.id, _file_dhash(str(s.image))) for s in b]
    pairs = []
    for s in a:
        ha = _file_dhash(str(s.image))
        for idb, hv in hb:
            d = bin(ha ^ hv).count("1")
            if d <= max_distance and idb != s.id:
                pairs.append((s.id, idb, d))
    return pairs


def describe(splits: Splits, subset: Sequence[Sample]) -> str:
    pct = 100 * len(subset) / max(len(splits.train), 1)
    shown = f"{pct:.2g}" if pct < 10 else f"{pct:.0f}"  # 0.19, 1, 10, 100 (not 1e+02)
    return (f"train pool {len(splits.train)}, labelled subset {len(subset)} ({shown} %), validation "
            f"{len(splits.validation)}, test {len(splits.test)}"
            + (f"; {splits.n_excluded} id(s) excluded because they are in the test data" if splits.n_excluded else ""))
