"""Drawing on images for the pictures people look at (both stages): ``draw_contour``."""
from __future__ import annotations

import cv2
import numpy as np


def draw_contour(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> None:
    """Draw the outer contours of ``mask`` ``(H, W)`` (nonzero = inside) on ``image`` ``(H, W, 3) uint8``, in place.

    The one contour helper of the pictures: contact sheets, the synthetic sheet, the fine-tune best/worst sheet.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, colour, thickness)
