"""The dataset layer: find images (and expert masks) in the layouts researchers have, and check them up front.

Three layouts are recognised (image ids are file stems):

(a) ISIC 2018 Task 1 as distributed::

        ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg
        ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png
        (and the same with _Validation_ and _Test_)

(b) a plain folder: ``images/<ID>.<ext>`` with optional ``masks/<ID>_segmentation.png``;
(c) a flat folder of images with no masks.

Several folders can be combined (a labelled folder plus unlabelled ones); an id seen twice is reported and
only its first occurrence kept. Images are read from the layout's image folder itself: images in its sub-folders,
or in folders beside the layout's own (an ``unlabeled/`` beside ``images/``), are named in one warning per
sub-folder and left out (pass a sub-folder as another data folder to use it). An
image whose name is not a plain printable file name (a control character, a line break) is named and left out:
its id would become a file name. ``check_dataset`` reads headers (and masks when asked) and returns every
problem at once, in the spirit of nnU-Net's ``verify_dataset_integrity``.

Masks: :func:`read_mask` is the one reader of expert masks (the data check, ``finetune``, ``evaluate``, the
metrics). A mask is single-channel 0/255 (16-bit: 0/65535; or 0/1), or a colour mask whose lesion colour is
unambiguous; anything else is refused with the file named (see :func:`read_mask`).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_segmentation.png"
SOFT_CUT = 128  # read_mask(soft='cut'): as the official ISIC scorer, an 8-bit pixel is lesion when > 128
MIN_SIDE = 32
ISIC2018_SPLITS = {"Training": "train", "Validation": "validation", "Test": "test"}

# Pillow refuses images above ~179 Mpx as "decompression bombs"; dermoscopy tops out near 30 Mpx.
#: The largest image edgedino reads (pixels, and px a side: JPEG's own limit); a shard's ``orig_shape`` is held to
#: the same bounds, so no file can make a command allocate more than such an image needs.
MAX_PIXELS = 400_000_000
MAX_SIDE = 65_535
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``split`` is ``'train'``, ``'validation'`` or ``'test'`` when the layout says so (ISIC 2018), else ``None``.
    """

    id: str
    image: Path
    mask: Path | None = None
    split: str | None = None
    root: Path | None = None


@dataclass(frozen=True)
class Problem:
    """Something wrong with a dataset. ``fatal`` problems stop every command; others drop one sample."""

    path: Path
    reason: str
    id: str | None = None
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DatasetError(ValueError):
    """Raised with every fatal problem of a dataset in one message of one line (the first ``SHOWN`` problems
    named, the rest counted; all of them in ``problems``)."""

    SHOWN = 10

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(str(self.problems[0]))
            return
        shown = "; ".join(str(p) for p in self.problems[: self.SHOWN])
        more = len(self.problems) - self.SHOWN
        super().__init__(f"{len(self.problems)} problem(s) with the data: {shown}"
                         + (f"; and {more} more" if more > 0 else ""))


class ImageReadError(ValueError):
    """An image or mask file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    """Samples from one or more folders, sorted by id, plus the problems found while listing them."""

    samples: tuple[Sample, ...]
    roots: tuple[Path, ...]
    problems: tuple[Problem, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    @property
    def labelled(self) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.mask is not None)

    def split(self, name: str) -> tuple[Sample, ...]:
        return tuple(s for s in self.samples if s.split == name)

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _list_images(folder: Path, problems: list[Problem] | None = None) -> list[Path]:
    """The images directly in ``folder``; with ``problems``, a warning for each sub-folder holding images."""
    # Directories named like images are listed too: they are reported as problems, not silently dropped.
    found = sorted(p for p in folder.iterdir() if _is_image_name(p))
    if problems is not None:
        problems += _nested_images(folder)
    return found


def _nested_images(folder: Path, *, skip: Iterable[Path] = (), known: frozenset[str] = frozenset()) -> list[Problem]:
    """One non-fatal problem per sub-folder of ``folder`` (hidden ones and ``skip`` aside) holding image files the
    layouts do not read. Expert masks (``*_segmentation.png``) do not count, nor companions of the ``known`` ids
    (``<ID>.png`` or ``<ID>_<anything>.png``: a synthetic set's hair/ and clean/, ISIC's attribute masks)."""
    skipped = {Path(p) for p in skip}
    problems = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and not _is_image_name(p) and p not in skipped):
        count, first = 0, None
        for where, dirs, files in os.walk(sub):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if (_is_image_name(Path(name)) and not name.endswith(MASK_SUFFIX)
                        and not _companion(Path(name).stem, known)):
                    count, first = count + 1, first or Path(where) / name
        if count:
            read = f"only {', '.join(p.name + '/' for p in sorted(skipped))} of {folder}" if skipped else \
                f"only the images directly in {folder}"
            problems.append(Problem(sub, f"{count} image(s) in this sub-folder are not read (e.g. {first.name}): "
                                         f"{read} are; pass the sub-folder as another data folder to use them"))
    return problems


def _companion(stem: str, known: frozenset[str]) -> bool:
    """True when ``stem`` is one of the ``known`` ids or one followed by ``_<suffix>``."""
    parts = stem.split("_")
    return any("_".join(parts[:k]) in known for k in range(1, len(parts) + 1))


def _masks_by_id(folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name[: -len(MASK_SUFFIX)]: p for p in sorted(folder.iterdir()) if p.name.endswith(MASK_SUFFIX)}


def _pair(images: list[Path], masks: dict[str, Path], split: str | None, root: Path,
          problems: list[Problem], mask_dir: Path | None) -> list[Sample]:
    plain = []
    for p in images:  # an id becomes a file name (<ID>_segmentation.png): never one with control characters
        if p.stem.isprintable() and p.stem.strip():
            plain.append(p)
        else:
            problems.append(Problem(p.parent, f"file name {p.name!r} holds a control or unprintable character; "
                                              "skipped (rename it to use it)"))
    images = plain
    ids = {p.stem for p in images}
    for mid, mpath in masks.items():
        if mid not in ids:
            problems.append(Problem(mpath, "mask without an image", id=mid))
    if mask_dir is not None and masks:
        for p in images:
            if p.stem not in masks:
                problems.append(Problem(p, f"image without a mask in {mask_dir}", id=p.stem))
    return [Sample(p.stem, p, masks.get(p.stem), split, root) for p in images]


def _read_folder(root: Path, problems: list[Problem]) -> list[Sample]:
    if not root.exists():
        problems.append(Problem(root, "folder does not exist", fatal=True))
        return []
    if not root.is_dir():
        problems.append(Problem(root, "not a folder", fatal=True))
        return []
    isic_inputs = sorted(root.glob("ISIC2018_Task1-2_*_Input"))
    if isic_inputs:  # (a) ISIC 2018 layout
        samples = []
        for inp in isic_inputs:
            split_word = inp.name.split("_")[2]
            split = ISIC2018_SPLITS.get(split_word)
            gt = root / f"ISIC2018_Task1_{split_word}_GroundTruth"
            images = _list_images(inp, problems)
            samples += _pair(images, _masks_by_id(gt), split, root, problems, gt if gt.is_dir() else None)
        read = [*isic_inputs, *root.glob("ISIC2018_Task1_*_GroundTruth")]
    elif (root / "images").is_dir():  # (b) images/ + optional masks/
        mask_dir = root / "masks" if (root / "masks").is_dir() else None
        samples = _pair(_list_images(root / "images", problems), _masks_by_id(mask_dir), None, root, problems,
                        mask_dir)
        read = [p for p in (root / "images", root / "masks") if p.is_dir()]
    else:
        return _pair(_list_images(root, problems), {}, None, root, problems, None)  # (c) flat folder
    # other folders beside the layout's own: images there are not read either (e.g. an unlabeled/ folder)
    problems += _nested_images(root, skip=read, known=frozenset(s.id for s in samples))
    return samples


def open_dataset(paths: str | Path | Iterable[str | Path], *, require_masks: bool = False) -> Dataset:
    """List the samples in one or more data folders.

    Parameters
    ----------
    paths : path or iterable of paths
        Data folders in any of the three layouts (see the module docstring).
    require_masks : bool
        When True, an image without a mask is a fatal problem (fine-tuning, evaluation).

    Returns
    -------
    Dataset
        Samples sorted by id; non-fatal problems (a mask without an image, a duplicate id) in ``problems``.

    Raises
    ------
    DatasetError
        Missing folder, a folder with no images, or (``require_masks``) images without masks, all in one message.
    """
    roots = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not roots:
        raise ValueError("open_dataset: give at least one data folder")
    problems: list[Problem] = []
    seen: dict[str, Sample] = {}
    for root in roots:
        found = _read_folder(root, problems)
        if not found and root.is_dir():
            problems.append(Problem(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found", fatal=True))
        for s in found:
            if s.id in seen:
                problems.append(Problem(s.image, f"duplicate id {s.id!r}: already read from {seen[s.id].image}; "
                                                 "keeping the first", id=s.id))
                continue
            seen[s.id] = s
    samples = tuple(sorted(seen.values(), key=lambda s: s.id))
    if require_masks:
        for s in samples:
            if s.mask is None:
                problems.append(Problem(s.image, "image without a mask (masks are required here)", id=s.id,
                                        fatal=True))
        problems = [Problem(p.path, p.reason, p.id, True) if p.reason.startswith("image without a mask")
                    else p for p in problems]
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise DatasetError(fatal)
    _log_problems(problems)
    return Dataset(samples, tuple(roots), tuple(problems))


#: Non-fatal problems of one kind logged one per line; the rest of that kind in one summary line.
SHOWN_PER_KIND = 3


def _log_problems(problems: Sequence[Problem]) -> None:
    """Log non-fatal problems, at most :data:`SHOWN_PER_KIND` of each reason and a count of the rest (a partly
    labelled folder has hundreds of images without a mask: they are the unlabelled pool, not news)."""
    by_reason: dict[str, list[Problem]] = {}
    for p in problems:
        by_reason.setdefault(p.reason, []).append(p)
    for reason, group in by_reason.items():
        for p in group[:SHOWN_PER_KIND]:
            log.warning("%s", p)
        if len(group) > SHOWN_PER_KIND:
            log.warning("... and %d more: %s", len(group) - SHOWN_PER_KIND, reason)


def image_size(path: Path) -> tuple[int, int]:
    """Return ``(height, width)`` from the file header, without decoding the pixels.

    Raises
    ------
    ImageReadError
        The path is not a readable image file (missing, a directory, zero bytes, not an image).
    """
    header = image_header(path)
    return header.height, header.width


class ImageHeader(NamedTuple):
    """What the file header says: upright ``height`` and ``width`` (EXIF orientation applied), the EXIF
    ``orientation`` (1-8) and the Pillow ``mode``."""

    height: int
    width: int
    orientation: int
    mode: str


def image_header(path: Path) -> ImageHeader:
    """:func:`image_size` with the orientation and mode, from one read of the header (see :class:`ImageHeader`).

    Raises
    ------
    ImageReadError
        As :func:`image_size`.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image file")
    _check_exists(path)
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation, mode = _exif_orientation(im), im.mode
    except Exception as exc:  # PIL raises many types for bad files
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise ImageReadError(f"{path}: image too large ({width}x{height}, {height * width:,} pixels); edgedino "
                             f"reads at most {MAX_PIXELS:,} pixels and {MAX_SIDE} px a side")
    if orientation in _SWAPS_SIDES:
        height, width = width, height
    return ImageHeader(height, width, orientation, mode)


# EXIF orientation (tag 0x0112): how to turn the stored pixels upright, as image viewers do (and as the ISIC
# masks assume). Values 5-8 swap height and width. Applied by ``_orient`` after every decode, whatever its size.
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)


def _png_without_exif(im: Image.Image) -> bool:
    """True when ``im`` is a PNG with no ``eXIf`` chunk anywhere: its orientation is 1 without decoding.

    Pillow's ``getexif`` on a PNG decodes every pixel to look for an ``eXIf`` chunk after the image data (6 ms
    for an ISIC mask, as much as a twentieth of stage 1's work on an image). This walks the chunk headers
    instead (8 bytes each, the data skipped: PNG specification, section 5.3) and leaves the file where it was.
    Anything unexpected (a truncated file, a chunk running past the end) answers False: Pillow then decides.
    """
    if im.format != "PNG" or "exif" in im.info or not hasattr(im, "fp") or im.fp is None:
        return False
    fh = im.fp
    where = fh.tell()
    try:
        fh.seek(8)  # the signature
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return False
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                return False
            if kind == b"IEND":
                return True
            fh.seek(length + 4, 1)  # data and CRC
    except (OSError, ValueError):
        return False
    finally:
        fh.seek(where)


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation of an open Pillow image (1 = upright, also for no or a bad tag)."""
    if _png_without_exif(im):
        return 1
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block: treat the pixels as upright, like most viewers
        return 1
    return value if 1 <= value <= 8 else 1


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn decoded pixels upright: ``(H, W, ...) -> (H, W, ...)`` or ``(W, H, ...)`` for orientations 5-8.

    The eight EXIF cases (TIFF 6.0 / EXIF 2.32, tag 274): 2 mirror left-right, 3 rotate 180, 4 mirror
    top-bottom, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
    """
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
           7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1]}
    return np.ascontiguousarray(ops[orientation](image))


GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")  # Pillow modes without colour


def _check_exists(path: Path) -> None:
    """Name why ``path`` cannot be opened: missing, a broken or looping symbolic link, no permission."""
    import errno

    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(f"{path}: symbolic link loop") from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise ImageReadError(f"{path}: broken symbolic link (its target does not exist)") from None
        if exc.errno == errno.ENOENT:
            raise ImageReadError(f"{path}: file does not exist") from None
        raise ImageReadError(f"{path}: cannot open ({exc.strerror})") from None


def _reduction_flag(size: tuple[int, int], min_long_side: int | None) -> tuple[int, int]:
    """Pick cv2's reduced-decode flag (1/2, 1/4, 1/8) keeping the long side >= ``min_long_side``."""
    if not min_long_side:
        return cv2.IMREAD_UNCHANGED, 1
    long_side = max(size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if long_side // factor >= min_long_side:
            return flag, factor
    return cv2.IMREAD_UNCHANGED, 1


def read_image(path: str | Path, *, min_long_side: int | None = None,
               header: ImageHeader | None = None) -> np.ndarray:
    """Read a dermoscopy image as RGB.

    Parameters
    ----------
    path : path-like
        JPEG, PNG, BMP or TIFF.
    min_long_side : int, optional
        Let the decoder downscale by 2, 4 or 8 while the long side stays at least this; keeps very large
        images (e.g. 8000 x 6000) cheap in memory. ``None`` decodes at full size.
    header : ImageHeader, optional
        ``image_header(path)`` when the caller has it already (the header is then not read again).

    Returns
    -------
    (H, W, 3) uint8
        RGB, turned upright by the file's EXIF orientation (as viewers show it; :func:`image_size` reports the
        same upright size at every decode size). RGBA loses its alpha channel; 16-bit images are scaled to 8 bits.

    Raises
    ------
    ImageReadError
        The file is missing, empty, a directory, corrupt or truncated, grey-scale (dermoscopy needs colour),
        or smaller than 32 px on a side.
    """
    path = Path(path)
    header = image_header(path) if header is None else header
    height, width = header.height, header.width
    if min(height, width) < MIN_SIDE:
        raise ImageReadError(f"{path}: image too small ({width}x{height}); need at least {MIN_SIDE} px a side")
    flag, _ = _reduction_flag((height, width), min_long_side)
    with warnings.catch_warnings():
        data = np.fromfile(path, dtype=np.uint8)
        # OpenCV applies EXIF orientation in reduced decodes but not with IMREAD_UNCHANGED: switch it off
        # everywhere and apply it once, below, so every decode size gives the same upright picture.
        image = cv2.imdecode(data, flag if flag == cv2.IMREAD_UNCHANGED else flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"{path}: corrupt or truncated image (the decoder returned nothing)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise ImageReadError(f"{path}: grey-scale image (1 channel); dermoscopy images must be colour")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}; expected 8- or 16-bit")
    if _is_truncated_jpeg(path, data):
        raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    if header.mode in GREY_MODES:  # OpenCV expands grey + alpha to 4 equal colour channels
        raise ImageReadError(f"{path}: grey-scale image (mode {header.mode}); dermoscopy images must be colour")
    # BGR(A) -> RGB by OpenCV: a new contiguous array at about a fifth of the cost of copying a reversed view
    rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return rgb if header.orientation == 1 else _orient(rgb, header.orientation)


def _is_truncated_jpeg(path: Path, data: np.ndarray) -> bool:
    # libjpeg fills a truncated image with grey and only warns; the missing EOI marker gives it away.
    if path.suffix.lower() not in (".jpg", ".jpeg") or data.size < 4:
        return False
    return b"\xff\xd9" not in data[-4096:].tobytes()


def read_mask(path: str | Path, *, soft: str = "refuse") -> np.ndarray:
    """Read a mask file: ``(H, W) bool``, lesion True. The one mask reader of every command.

    Parameters
    ----------
    path : path-like
        A PNG (or any format OpenCV reads; a lossy JPEG mask is refused by the rules below unless its values
        survived compression).
    soft : {'refuse', 'cut'}
        What an 8-bit single-channel mask with values other than two is: refused (expert masks for training and
        the data check), or cut at ``> 128`` as the official ISIC scorer does (``evaluate``: predicted
        probability maps x 255 and grey masks are scored as the challenge scores them).

    Returns
    -------
    (H, W) bool
        Upright by the file's EXIF orientation, as :func:`image_size` reports it.

    Notes
    -----
    Accepted, and nothing else:

    - **single channel** (grey, 1-bit, 8- or 16-bit, or a colour file whose channels are all equal): exactly the
      values 0 and 255, 0 and 65535 (16-bit) or 0 and 1; all 0 is an empty mask (no lesion);
    - **colour** (RGB, RGBA, palette; channels not all equal): the lesion colour must be unambiguous: the
      background is black (or transparent, when the file has fully transparent pixels) and every other pixel is
      one and the same colour, the lesion (red on black, as many annotation tools save them, or any other single
      colour). Two or more lesion colours, partly transparent pixels (soft edges) or a colour mask without a
      black or transparent background are refused: which pixels are the lesion is a guess.

    Raises
    ------
    ImageReadError
        Unreadable file, an unsupported pixel type, or a mask that breaks the rules above (the file and the
        values or colours found are named).
    """
    if soft not in ("refuse", "cut"):
        raise ValueError(f"read_mask: soft must be 'refuse' or 'cut', got {soft!r}")
    path = Path(path)
    orientation = image_header(path).orientation
    mask = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ImageReadError(f"{path}: corrupt or unreadable mask")
    if mask.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"{path}: mask pixel type {mask.dtype} is not supported; expected 8- or 16-bit")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim == 3 and mask.shape[2] not in (3, 4):
        raise ImageReadError(f"{path}: mask has {mask.shape[2]} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    lesion = _grey_lesion(mask, path, soft) if mask.ndim == 2 else _colour_lesion(mask, path, soft)
    return _orient(lesion, orientation)


def _grey_lesion(mask: np.ndarray, path: Path, soft: str) -> np.ndarray:
    """A single-channel mask ``(H, W) uint8/uint16 -> (H, W) bool`` by :func:`read_mask`'s rule."""
    top = np.iinfo(mask.dtype).max
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=2)) if mask.dtype == np.uint8 else np.unique(mask)
    if len(present) <= 1 and (not len(present) or present[0] in (0, 1, 255, top)):
        return mask > 0
    if len(present) == 2 and present[0] == 0 and present[1] in (1, 255, top):
        return mask > 0
    if soft == "cut" and mask.dtype == np.uint8:  # the official ISIC scorer's rule
        return mask > (0 if present[-1] <= 1 else SOFT_CUT)
    shown = ", ".join(str(v) for v in present[:6]) + (", ..." if len(present) > 6 else "")
    kind = "16-bit " if mask.dtype == np.uint16 else ""
    raise ImageReadError(f"{path}: mask is not binary (values {shown}); expected {kind}0/{top} or 0/1 "
                         "(a JPEG-compressed or smoothed mask has values in between: save it as a PNG of 0 and 255)")


def _colour_lesion(mask: np.ndarray, path: Path, soft: str) -> np.ndarray:
    """A 3- or 4-channel mask (OpenCV's BGR(A)) ``(H, W, C) -> (H, W) bool`` by :func:`read_mask`'s rule."""
    colour = mask[:, :, :3]
    alpha = mask[:, :, 3] if mask.shape[2] == 4 else None
    top = np.iinfo(mask.dtype).max
    if alpha is not None and ((alpha > 0) & (alpha < top)).any():
        raise ImageReadError(f"{path}: mask has partly transparent pixels (soft edges); which pixels are the "
                             "lesion is ambiguous: save it as a single-channel PNG of 0 and 255")
    transparent = alpha == 0 if alpha is not None and (alpha == 0).any() else None
    if transparent is None:
        if (colour == colour[:, :, :1]).all():  # grey stored as colour: the single-channel rule
            return _grey_lesion(np.ascontiguousarray(colour[:, :, 0]), path, soft)
        background = ~colour.any(axis=2)
        what = "black"
    else:
        background = transparent
        what = "transparent"
    others = colour[~background]
    if len(others) and not (others == others[0]).all():
        n = len(np.unique(others.reshape(-1, 3), axis=0))
        raise ImageReadError(f"{path}: colour mask with {n} colours besides its {what} background; the lesion colour "
                             "is ambiguous: save it as a single-channel PNG of 0 and 255 (or one colour on black)")
    if not background.any() and transparent is None and len(others):
        raise ImageReadError(f"{path}: colour mask without a black background (one colour everywhere); the lesion "
                             "is ambiguous: save it as a single-channel PNG of 0 and 255")
    return ~background


def check_sample(sample: Sample, *, check_mask_values: bool = True) -> list[Problem]:
    """Problems of one sample: unreadable image, unreadable/non-binary mask, image/mask size mismatch."""
    problems = []
    try:
        hw = image_size(sample.image)
        if min(hw) < MIN_SIDE:
            problems.append(Problem(sample.image, f"image too small ({hw[1]}x{hw[0]})", sample.id))
    except ImageReadError as exc:
        return [Problem(sample.image, str(exc).split(": ", 1)[1], sample.id)]
    if sample.mask is not None:
        try:
            mhw = image_size(sample.mask)
            if mhw != hw:
                problems.append(Problem(sample.mask, f"mask size {mhw[1]}x{mhw[0]} differs from image size "
                                                     f"{hw[1]}x{hw[0]}", sample.id))
            elif check_mask_values:
                read_mask(sample.mask)
        except ImageReadError as exc:
            problems.append(Problem(sample.mask, str(exc).split(": ", 1)[1], sample.id))
    return problems


def check_dataset(dataset: Dataset, *, check_mask_values: bool = True, progress: bool = False) -> list[Problem]:
    """Check every sample's headers (and mask values); return all problems, the listing's ones included."""
    problems = list(dataset.problems)
    for sample in tqdm(dataset.samples, desc="checking data", unit="img", disable=not progress):
        problems += check_sample(sample, check_mask_values=check_mask_values)
    return problems


def mask_path_for(image_path: str | Path) -> Path | None:
    """The expert mask that belongs to an image file in any known layout, or None if there is none."""
    image_path = Path(image_path)
    parent = image_path.parent
    candidates = [parent.parent / "masks" / f"{image_path.stem}{MASK_SUFFIX}"]
    if parent.name.startswith("ISIC2018_Task1-2_") and parent.name.endswith("_Input"):
        split_word = parent.name.split("_")[2]
        candidates.append(parent.parent / f"ISIC2018_Task1_{split_word}_GroundTruth"
                          / f"{image_path.stem}{MASK_SUFFIX}")
    return next((c for c in candidates if c.is_file()), None)


#: An id list is small: a file larger than this is not one (a wrong file passed by mistake).
MAX_ID_LIST_BYTES = 16 << 20


def read_id_list(path: str | Path) -> list[str]:
    """The image ids listed in ``path``: a CSV with an ``id`` column (``advise.csv``), or one id per line (blank
    lines and ``#`` comments skipped). Ids must be plain printable file stems.

    Raises
    ------
    ValueError
        In one line naming the file: not readable as text, too large, a CSV without an ``id`` column, or an id
        that is not a plain name.
    """
    import csv
    import io

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected a list of image ids, one per line, or a CSV with an id "
                         "column)")
    if path.stat().st_size > MAX_ID_LIST_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes is too large for a list of image ids")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path}: not a text file of image ids ({exc})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and "," in lines[0]:
        rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
        if not rows or "id" not in rows[0]:
            raise ValueError(f"{path}: a CSV without an 'id' column (its columns: {lines[0]})")
        ids = [(r.get("id") or "").strip() for r in rows]
    else:
        ids = lines
    for i in ids:
        if not i or not i.isprintable() or "/" in i or "\\" in i or i in (".", ".."):
            raise ValueError(f"{path}: {i!r} is not an image id (a plain file name without its extension)")
    return ids
