"""Masks as single-channel PNG files: the bytes (``encode_png``) and the atomic write (``write_mask_png``).

Stage 1 exports its pseudo-masks with them (:func:`pipeline.export.export_masks`), stage 2 its predictions.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.atomic import write_bytes


def encode_png(mask: np.ndarray, name: str = "mask") -> bytes:
    """An ``(H, W) uint8`` image as single-channel PNG bytes (``name`` for the error message)."""
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError(f"{name}: PNG encoding failed")
    return buf.tobytes()


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """Write an ``(H, W) uint8`` 0/255 mask as a single-channel PNG, atomically."""
    write_bytes(path, encode_png(mask, str(path)))
