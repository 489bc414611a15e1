"""One image in, one edge-aware pseudo-mask out: hair removal -> seeds -> Random Walker -> clean-up.

``method='s3net'`` replaces the Random Walker by per-image unsupervised clustering (:mod:`pipeline.pseudomask.s3net`),
its lesion clusters chosen from the same coarse lesion map.

Resolutions (ours): hair is found at ``hair_long_side`` (768 px long side: hairs stay 1-4 px wide); the
walker runs at ``walker_long_side`` (256 px, aspect ratio kept so the graph is isotropic); every output is
then **squashed** to ``size x size`` (the shard geometry; ``orig_shape`` maps it back).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.pseudomask.cleanup import main_component
from pipeline.pseudomask.cut import choose_cut, load_cut_model
from pipeline.pseudomask.fov import edge_run
from pipeline.pseudomask.hair import HairConfig, HairResult, remove_hair
from pipeline.pseudomask.s3net import S3NetConfig, s3net_segment
from pipeline.pseudomask.seeds import (
    BACKGROUND,
    LESION,
    SeedConfig,
    coarse_lesion_evidence,
    coarse_lesion_map,
    field_of_view,
    seed_labels,
    to_lab,
)
from pipeline.pseudomask.walker import WalkerConfig, walk

DIAGNOSTICS = ("fov_fraction", "coarse_fraction", "separation", "fg_seed_fraction", "bg_seed_fraction",
               "hair_fraction", "hair_skipped", "lesion_fraction", "uncertain_fraction", "edge_run",
               "edge_rejected", "confidence", "threshold", "hair_seconds", "walker_seconds")
METHODS = ("walker", "s3net")
CUT_RULES = ("learned", "fixed")


@dataclass(frozen=True)
class PseudoMaskConfig:
    """Everything that decides a pseudo-mask. JSON-serialisable with ``dataclasses.asdict``.

    Attributes
    ----------
    hair, seeds, walker : HairConfig, SeedConfig, WalkerConfig
    hair_long_side : int
        Long side (px) at which hair is found and inpainted. Smaller images are used as they are.
    walker_long_side : int
        Long side (px) of the Random Walker's grid.
    threshold : float
        Walker probability above which a pixel is lesion with ``cut_rule='fixed'``, and where the learned rule
        finds no usable candidate. 0.3, not 0.5: expert ISIC masks include the pale lesion periphery, and the
        walker's probability falls below 0.5 there (docs/EXPERIMENTS.md, "Seeds, threshold and walker").
    cut_rule : {'learned', 'fixed'}
        ``'learned'`` (default): the cut is chosen per image among the thresholds 0.1-0.7 by the model
        ``cut_model`` (:mod:`pipeline.pseudomask.cut`; docs/METHOD.md, section 3.4). ``'fixed'``: ``threshold``
        for every image.
    cut_model : str
        Name of the bundled cut model (``pipeline/pseudomask/cut_model.json``); a refitted model gets a new
        name, hence a new config hash.
    method : {'walker', 's3net'}
        What turns the seeds into a mask: the Random Walker (default, about 0.2 s per image), or per-image
        unsupervised clustering after S^3-Net (:func:`pipeline.pseudomask.s3net.s3net_segment`; slower, label-free).
    s3net : S3NetConfig
        Used when ``method='s3net'``.
    edge_run_max : float
        A mask whose outline lies along the field-of-view edge over more than this fraction
        (:func:`pipeline.pseudomask.fov.edge_run`) has leaked along a dark lens rim: it is rejected and the walker
        probability is thresholded higher (``edge_thresholds``) until the outline leaves the edge; failing
        that, the coarse lesion map is used. 1 disables the check. 0.6: a lesion that truly reaches the rim runs
        along it too, and 0.6 is the lowest value tried that fires on none of the real images measured while still
        catching a mask that rings the lens (docs/EXPERIMENTS.md, "The edge-run check").
    edge_thresholds : tuple of float
        The higher thresholds tried, in order, after an edge-run rejection.
    """

    hair: HairConfig = field(default_factory=HairConfig)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    walker: WalkerConfig = field(default_factory=WalkerConfig)
    hair_long_side: int = 768
    walker_long_side: int = 256
    threshold: float = 0.3
    method: str = "walker"
    s3net: S3NetConfig = field(default_factory=S3NetConfig)
    edge_run_max: float = 0.6
    edge_thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
    cut_rule: str = "learned"
    cut_model: str = "isic2017_256-v2"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PseudoMaskConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.cut_rule not in CUT_RULES:
            raise ValueError(f"PseudoMaskConfig.cut_rule must be one of {CUT_RULES}, got {self.cut_rule!r}")
        if not 0.0 < self.edge_run_max <= 1.0:
            raise ValueError(f"PseudoMaskConfig.edge_run_max must be in (0, 1], got {self.edge_run_max}")


@dataclass(frozen=True)
class PseudoMaskResult:
    cleaned: np.ndarray      # (size, size, 3) uint8, hair removed
    hair_mask: np.ndarray    # (size, size) bool
    prob: np.ndarray         # (size, size) float32 in [0, 1]
    mask: np.ndarray         # (size, size) bool
    no_lesion: bool
    diagnostics: dict[str, float]


def resize_long(image: np.ndarray, long_side: int) -> np.ndarray:
    """``image`` shrunk (area interpolation, aspect kept) so its long side is ``long_side``; smaller images as
    they are."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _squash(array: np.ndarray, size: int, *, binary: bool = False) -> np.ndarray:
    if binary:
        soft = cv2.resize(array.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        return soft >= 0.5
    interp = cv2.INTER_AREA if array.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interp)


def mask_confidence(prob: np.ndarray, mask: np.ndarray, fov: np.ndarray, *, separation: float,
                    edge_rejected: bool) -> float:
    """How far a pseudo-mask can be trusted, in [0, 1], without labels.

    ``(H, W) float32, (H, W) bool, (H, W) bool -> float``. The product of three terms (ours):

    - the walker's probability margin: ``1 - u / (a + u)`` with ``u`` the field-of-view pixels of
      uncertain probability (0.1 < p < 0.9) and ``a`` the mask area (a clear-cut walk gives 1);
    - the colour evidence: ``min(1, separation / 3)``, the coarse map's Otsu separation (a faint lesion gives
      a small value);
    - 0.5 when the first mask ran along the field-of-view edge and was replaced (:func:`pipeline.pseudomask.fov.edge_run`).

    An empty mask gives 0.
    """
    if not mask.any():
        return 0.0
    uncertain = float(((prob > 0.1) & (prob < 0.9) & fov).sum())
    margin = 1.0 - uncertain / (float(mask.sum()) + uncertain)
    evidence = min(1.0, max(0.0, separation) / 3.0)
    return float(margin * evidence * (0.5 if edge_rejected else 1.0))


def _leave_the_edge(prob: np.ndarray, mask: np.ndarray, fg: np.ndarray, fov: np.ndarray, coarse: np.ndarray,
                    config: PseudoMaskConfig, threshold: float) -> tuple[np.ndarray, float, bool]:
    """The edge-run check: ``(mask, its edge_run, rejected)``; see ``PseudoMaskConfig.edge_run_max``. The
    higher thresholds tried are the ``edge_thresholds`` above ``threshold``, the cut that gave ``mask``."""
    run = edge_run(mask, fov)
    if run <= config.edge_run_max:
        return mask, run, False
    for t in (t for t in config.edge_thresholds if t > threshold):
        candidate = main_component(prob > t, fg)
        if candidate.any() and (run := edge_run(candidate, fov)) <= config.edge_run_max:
            return candidate, run, True
    fallback = coarse & fov
    return fallback, edge_run(fallback, fov), True


def segment(small: np.ndarray, *, config: PseudoMaskConfig = PseudoMaskConfig(), seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Seeds, walker (or S^3-Net clustering) and clean-up on a hair-free image at the walker resolution.

    ``(h, w, 3) uint8 -> (fov, coarse, separation, labels, prob, mask, checks)``: (h, w) bool field of view
    and coarse map, the Otsu separation (float), (h, w) int8 seed labels, (h, w) float32 lesion probability,
    the (h, w) bool mask (all False when no lesion stands out) and ``checks``: ``edge_run``,
    ``edge_rejected``, ``confidence`` (see :func:`mask_confidence`) and ``threshold``, the walker cut used
    (``config.cut_rule``; the S^3-Net clustering's own threshold with ``method='s3net'``), all floats.
    ``seed`` is used by ``method='s3net'`` only.
    """
    lab = to_lab(small)
    fov = field_of_view(small, config=config.seeds, lab=lab)
    found = coarse_lesion_evidence(lab, fov, config=config.seeds)
    coarse, separation = found.coarse, found.separation
    labels = seed_labels(small, fov, config=config.seeds, coarse=coarse,
                         skin_like=found.feature <= found.skin_level)
    fg = labels == LESION
    if config.method == "s3net":
        prob, mask = s3net_segment(small, coarse=coarse & fov, fov=fov, config=config.s3net, seed=seed)
        rejected = False
        run = edge_run(mask, fov)
        threshold = config.s3net.threshold
    else:
        prob = walk(small, labels, config=config.walker, lab=lab)
        threshold, mask = config.threshold, None
        if fg.any() and config.cut_rule == "learned":
            chosen = choose_cut(prob, fg, fov, lab, separation=separation, coarse_fraction=float(coarse.mean()),
                                model=load_cut_model(config.cut_model))
            if chosen is not None:
                threshold, mask = chosen
        if mask is None:
            mask = np.zeros(prob.shape, bool) if not fg.any() else main_component(prob > threshold, fg)
        mask, run, rejected = _leave_the_edge(prob, mask, fg, fov, coarse, config, threshold)
    confidence = mask_confidence(prob, mask, fov, separation=separation, edge_rejected=rejected)
    checks = {"edge_run": run, "edge_rejected": float(rejected), "confidence": confidence,
              "threshold": float(threshold)}
    return fov, coarse, separation, labels, prob, mask, checks


def clean_image(image: np.ndarray, *, config: PseudoMaskConfig = PseudoMaskConfig()) -> HairResult:
    """Hair removal as stage 1 runs it: at ``hair_long_side``, guided by a quick coarse lesion map (and the
    field of view) found at ``walker_long_side``. ``(H, W, 3) uint8 -> HairResult`` at the hair resolution."""
    work = resize_long(image, config.hair_long_side)
    small = resize_long(work, config.walker_long_side)
    lab_small = to_lab(small)
    fov_small = field_of_view(small, config=config.seeds, lab=lab_small)
    # one pass is enough for a hint (it only protects the lesion core from the hair filter): ~10 ms saved
    hint_config = dataclasses.replace(config.seeds, second_pass=False)
    coarse_hint, _ = coarse_lesion_map(lab_small, fov_small, config=hint_config)
    wh = (work.shape[1], work.shape[0])
    hint = cv2.resize(coarse_hint.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST) > 0
    fov_work = cv2.resize(fov_small.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST) > 0
    return remove_hair(work, config=config.hair, lesion_hint=hint, fov=fov_work)


def make_pseudo_mask(image: np.ndarray, *, size: int = 256, config: PseudoMaskConfig = PseudoMaskConfig(),
                     seed: int = 0) -> PseudoMaskResult:
    """Edge-aware pseudo-mask of one dermoscopy image.

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image, any size from 32 px a side.
    size : int
        Output side: every output is squashed to (size, size).
    config : PseudoMaskConfig
    seed : int
        Seeds ``method='s3net'`` (derive it from ``(run seed, sample id)``); the walker is deterministic.

    Returns
    -------
    PseudoMaskResult
        ``cleaned`` (size, size, 3) uint8, ``hair_mask``, ``mask`` (size, size) bool, ``prob`` (size, size)
        float32, ``no_lesion`` and ``diagnostics`` (the keys of ``DIAGNOSTICS``, all floats).

    Notes
    -----
    A uniform image (or one where nothing stands out from the skin) has no lesion seeds: it returns
    ``no_lesion=True`` with an empty mask and a zero probability rather than raising, so the image can still
    serve self-distillation; the trainer gives its segmentation loss zero weight.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))} "
                         f"{getattr(image, 'dtype', '')}")
    if min(image.shape[:2]) < 32:
        raise ValueError(f"image must be at least 32 px a side, got {image.shape[1]}x{image.shape[0]}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    t0 = time.perf_counter()
    hair = clean_image(image, config=config)
    t1 = time.perf_counter()
    # Seeds and walker on the cleaned image.
    cleaned_small = resize_long(hair.cleaned, config.walker_long_side)
    seg = segment(cleaned_small, config=config, seed=seed)
    fov, coarse, separation, labels, prob, mask, checks = seg
    fg = labels == LESION
    t2 = time.perf_counter()
    no_lesion = not mask.any()
    if no_lesion:
        prob = np.zeros_like(prob)
    diagnostics = {
        "fov_fraction": float(fov.mean()),
        "coarse_fraction": float(coarse.mean()),
        "separation": float(separation),
        "fg_seed_fraction": float(fg.mean()),
        "bg_seed_fraction": float((labels == BACKGROUND).mean()),
        "hair_fraction": hair.fraction,
        "hair_skipped": float(hair.skipped),
        "lesion_fraction": float(mask.mean()),
        "uncertain_fraction": float(((prob > 0.1) & (prob < 0.9)).mean()),
        **checks,
        "hair_seconds": t1 - t0,
        "walker_seconds": t2 - t1,  # seeds + walker, or seeds + S^3-Net clustering
    }
    return PseudoMaskResult(cleaned=_squash(hair.cleaned, size), hair_mask=_squash(hair.mask, size, binary=True),
                            prob=np.clip(_squash(prob.astype(np.float32), size), 0, 1).astype(np.float32),
                            mask=_squash(mask, size, binary=True), no_lesion=no_lesion, diagnostics=diagnostics)
