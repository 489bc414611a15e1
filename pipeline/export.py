"""Pseudo-masks back to each image's original size, as ISIC-style ``<ID>_segmentation.png`` (0/255)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from common.atomic import atomic_batch
from common.guard import GuardError, check_out_dir, check_plain_name, output_folder
from common.png import encode_png
from pipeline.shards import ShardReader, check_orig_shape, shards_to_read


def mask_to_original(mask: np.ndarray, orig_shape: tuple[int, int]) -> np.ndarray:
    """Undo the squash: ``(S, S) {0,1} uint8/bool -> (H, W) uint8`` in {0, 255}.

    The mask is resized as a float with linear interpolation and cut at 0.5, so boundaries stay smooth
    instead of showing the S x S staircase.
    """
    height, width = int(orig_shape[0]), int(orig_shape[1])
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.where(soft >= 0.5, 255, 0).astype(np.uint8)


def export_masks(shards: str | Path, out_dir: str | Path, *, progress: bool = True, overwrite: bool = False) -> int:
    """Write every pseudo-mask in ``shards`` (file or folder) to ``out_dir``; return how many.

    Refuses (``GuardError``, before writing anything) an ``out_dir`` that overlaps the shards, a shards folder
    whose ``pseudomasks`` run is still going, a shard whose ids or sizes are out of bounds (an id that is not a
    plain file name, an ``orig_shape`` that is not a plausible image size or not the size of the image it was
    made from: :func:`pipeline.shards.check_orig_shape`), an id found twice, a second run into the same
    ``out_dir``, and a mask file already in ``out_dir`` that an earlier run did not write (e.g. the expert
    masks), unless ``overwrite`` (:func:`common.guard.output_folder`).
    """
    out_dir = check_out_dir(out_dir, [shards], flat_inputs=True)
    paths = shards_to_read(shards)
    if not paths:
        raise FileNotFoundError(f"{shards}: no shard files (shard-*.h5) found")
    names: dict[str, Path] = {}
    for path in paths:
        with ShardReader(path) as shard:  # ids and orig_shape bounds-checked on open
            for sample_id, shape, source in zip(shard.ids, shard.column("orig_shape"), shard.sources):
                name = f"{check_plain_name(sample_id, source=path)}_segmentation.png"
                if name in names:
                    raise GuardError(f"{path}: id {sample_id!r} is also in {names[name]}; export one run's shards")
                check_orig_shape(shape, where=f"{path}: {sample_id}", image=source or None)
                names[name] = path
    with output_folder(out_dir, command="export", names=sorted(names), inputs=[shards], flat_inputs=True,
                       overwrite=overwrite, overwrite_flag="--overwrite"):
        return _write_masks(paths, out_dir, progress=progress)


def _write_masks(paths: list[Path], out_dir: Path, *, progress: bool) -> int:
    """:func:`export_masks`' writing, once every shard is checked and ``out_dir`` locked and claimed."""
    n = 0
    for path in paths:
        with ShardReader(path) as shard, atomic_batch(out_dir) as batch:  # one sync per shard
            for sample in tqdm(shard, total=len(shard), desc=f"export {path.name}", unit="mask",
                               disable=not progress):
                mask = mask_to_original(sample["pseudo_mask"], sample["orig_shape"])
                name = f"{sample['id']}_segmentation.png"
                batch.write_bytes(name, encode_png(mask, name))
                n += 1
    return n
