"""Random Walker lesion probability on standardised, lightly smoothed Lab (docs/METHOD.md, section 3.3).

The linear system is scikit-image's ``random_walker`` with ``mode='cg_mg'`` (the same weights, Laplacian,
pyamg preconditioner and conjugate gradient, bit for bit), built here for the 2-D grid without its N-D
machinery and solved for the lesion label only: with two labels the background probability is never used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg
from skimage.segmentation import random_walker

from pipeline.pseudomask.seeds import BACKGROUND, INACTIVE, LESION, to_lab

__all__ = ["WalkerConfig", "walk"]


@dataclass(frozen=True)
class WalkerConfig:
    """Random Walker parameters.

    Attributes
    ----------
    beta : float
        Edge penalisation of scikit-image's ``random_walker`` (weights ``exp(-beta / (10 std) * |grad|^2)``).
        Larger values make the diffusion stop at weaker edges. 60 (tuned on isic2017_256; 130, scikit-image's
        default, stops at the texture inside lesions).
    smooth_sigma : float
        Gaussian sigma in pixels applied to each Lab channel before standardisation (removes JPEG and
        texture noise so weak texture edges do not stop the walk). Sized for a 256 px working grid.
    lightness_weight : float
        Multiplier of the standardised L* channel relative to a* and b* (L* carries most lesion borders).
    mode : {'cg_mg', 'cg_j', 'cg', 'bf'}
        Solver; ``'cg_mg'`` needs pyamg (scikit-image falls back to ``'cg_j'`` with a warning otherwise).
    tol : float
        Solver tolerance.
    """

    beta: float = 60.0
    smooth_sigma: float = 2.0
    lightness_weight: float = 1.0
    mode: str = "cg_mg"
    tol: float = 1e-3

    def __post_init__(self) -> None:
        if self.mode not in ("cg_mg", "cg_j", "cg", "bf"):
            raise ValueError(f"WalkerConfig.mode must be one of 'cg_mg', 'cg_j', 'cg', 'bf', got {self.mode!r}")
        if self.beta <= 0:
            raise ValueError(f"WalkerConfig.beta must be > 0, got {self.beta}")


def _features(image: np.ndarray, active: np.ndarray, config: WalkerConfig, lab: np.ndarray | None = None
              ) -> np.ndarray:
    lab = to_lab(image) if lab is None else lab
    if config.smooth_sigma > 0:
        lab = cv2.GaussianBlur(lab, (0, 0), config.smooth_sigma)
    px = lab[active] if active.any() else lab.reshape(-1, 3)
    mean = px.mean(axis=0)
    std = np.maximum(px.std(axis=0), 1e-3)
    feat = (lab - mean) / std
    feat[..., 0] *= config.lightness_weight
    return feat.astype(np.float64)


def walk(image: np.ndarray, labels: np.ndarray, *, config: WalkerConfig = WalkerConfig(),
         lab: np.ndarray | None = None) -> np.ndarray:
    """Lesion probability by the Random Walker (Grady 2006) on standardised Lab.

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB image (hair removed).
    labels : (H, W) int8
        Seeds (see :func:`pipeline.pseudomask.seeds.seed_labels`): 0 unlabelled, 1 lesion, 2 background, -1 inactive.
    config : WalkerConfig
    lab : (H, W, 3) float32, optional
        ``to_lab(image)`` when the caller has it already.

    Returns
    -------
    prob : (H, W) float32
        Probability that a random walker started at the pixel reaches a lesion seed first, clipped to [0, 1].
        Lesion seeds are 1, background seeds and inactive pixels 0. Without lesion seeds it is all 0; without
        background seeds it is 1 on every active pixel.

    Notes
    -----
    Each Lab channel is smoothed (Gaussian, ``smooth_sigma``) and standardised over the active pixels, so
    ``beta`` means the same on pale and on contrasted images. scikit-image's ``random_walker`` solves the
    Dirichlet problem on the 4-connected graph (``mode='cg_mg'``: conjugate gradient with a pyamg
    multigrid preconditioner). With ``'cg_mg'`` the system is built by :func:`lesion_system` and solved for
    the lesion label only (bitwise scikit-image's lesion probability, at half its solving cost); other modes,
    and the graphs scikit-image treats specially, go through ``random_walker`` itself.

    References
    ----------
    L. Grady, "Random walks for image segmentation", IEEE TPAMI 28(11), 2006.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))} "
            f"{getattr(image, 'dtype', '')}"
        )
    if not isinstance(labels, np.ndarray) or labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be an array of shape {image.shape[:2]}, got {getattr(labels, 'shape', None)}")
    labels = labels.astype(np.int8, copy=False)
    active = labels != INACTIVE
    prob = np.zeros(labels.shape, np.float32)
    has_fg = bool((labels == LESION).any())
    has_bg = bool((labels == BACKGROUND).any())
    if not has_fg:
        return prob
    if not has_bg:
        prob[active] = 1.0
        return prob
    feat = _features(image, active, config, lab)
    system = lesion_system(feat, labels, config.beta) if config.mode == "cg_mg" else None
    if system is None:
        return _walk_skimage(feat, labels, active, config)
    a, b, unknown = system
    p = np.zeros(labels.shape)
    p[unknown] = _solve_cg_mg(a, b, config.tol)
    p[labels == LESION] = 1
    return np.where(active, np.clip(p.astype(np.float32), 0.0, 1.0), 0.0).astype(np.float32)


def _walk_skimage(feat: np.ndarray, labels: np.ndarray, active: np.ndarray, config: WalkerConfig) -> np.ndarray:
    """scikit-image's ``random_walker`` itself: ``(H, W, 3) float64, (H, W) int8 -> (H, W) float32``."""
    with warnings.catch_warnings():
        # "The probability range is outside [0, 1]" (solver tolerance) is handled by the clip below
        warnings.simplefilter("ignore", UserWarning)
        full = random_walker(feat, labels, beta=config.beta, mode=config.mode, tol=config.tol,
                             return_full_prob=True, channel_axis=-1)
    p = np.asarray(full[0], dtype=np.float32)  # class 1 = lesion (labels sorted: 1, 2)
    return np.where(active, np.clip(p, 0.0, 1.0), 0.0).astype(np.float32)


def _solve_cg_mg(a: sparse.csr_array, b: np.ndarray, tol: float) -> np.ndarray:
    """``A x = b`` as scikit-image's ``'cg_mg'`` solves it: CG preconditioned by a Ruge-Stuben V-cycle, <= 30 steps."""
    from pyamg import ruge_stuben_solver

    ml = ruge_stuben_solver(a, coarse_solver="pinv")
    x, _ = cg(a, b[:, None], rtol=tol, atol=0, M=ml.aspreconditioner(cycle="V"), maxiter=30)
    return x


def edge_weights(feat: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Random Walker edge weights of the 4-connected grid, as scikit-image's ``random_walker`` computes them.

    ``(H, W, C) float64 -> (right (H, W - 1), down (H - 1, W))`` float64: the edges from pixel ``(y, x)`` to
    ``(y, x + 1)`` and to ``(y + 1, x)``, ``w = exp(-beta / (10 std sqrt(C)) * |f_p - f_q|^2) + 1e-10`` with
    ``std`` the standard deviation of all of ``feat``. The operations run in scikit-image's order, so the
    weights are bitwise its own.
    """
    scale = -beta / (10 * feat.std())
    scale /= np.sqrt(feat.shape[-1])
    out = []
    for axis in (1, 0):
        grad = np.diff(feat[..., 0], axis=axis) ** 2
        for c in range(1, feat.shape[-1]):
            grad += np.diff(feat[..., c], axis=axis) ** 2
        w = np.exp(scale * grad)
        w += 1.0e-10
        out.append(w)
    return out[0], out[1]


def _neighbour_weights(right: np.ndarray, down: np.ndarray, graph: np.ndarray) -> np.ndarray:
    """(4, H, W) weights to the up, left, right and down neighbour; 0 where either end is not in ``graph``."""
    h, w = graph.shape
    nb = np.zeros((4, h, w))
    nb[1, :, 1:] = np.where(graph[:, :-1] & graph[:, 1:], right, 0.0)
    nb[2, :, :-1] = nb[1, :, 1:]
    nb[0, 1:] = np.where(graph[:-1] & graph[1:], down, 0.0)
    nb[3, :-1] = nb[0, 1:]
    return nb


def lesion_system(feat: np.ndarray, labels: np.ndarray, beta: float
                  ) -> tuple[sparse.csr_array, np.ndarray, np.ndarray] | None:
    """The Random Walker's linear system for the lesion label, or None.

    Parameters
    ----------
    feat : (H, W, C) float64
        Pixel features (see :func:`edge_weights`).
    labels : (H, W) int8
        -1 inactive, 0 unlabelled, 1 lesion seed, 2 background seed.
    beta : float

    Returns
    -------
    (A, b, unknown) or None
        ``A`` (n, n) ``csr_array`` (float64, int32 indices, sorted columns): the graph Laplacian restricted to
        the ``n`` unknown pixels in raster order; ``b`` (n,) float64: the summed weights from each unknown pixel
        to the lesion seeds; ``unknown`` (H, W) bool: the unlabelled pixels 4-connected to a seed through
        active pixels (the others get probability 0). None in the cases scikit-image's ``random_walker`` treats
        specially (no unlabelled pixel; an active component with seeds but no unlabelled pixel; no unlabelled
        pixel reaching a seed): the caller then runs ``random_walker`` itself.

    Notes
    -----
    The Random Walker probability ``x`` of the lesion label solves ``L_U x = -B_U s`` (Grady 2006), with
    ``L_U`` the Laplacian rows and columns of the unknown pixels, ``B_U`` its columns of the seeds and ``s``
    the lesion indicator of the seeds. A node's degree sums its weights to the up, left, right and down
    neighbours in that order, as scipy's column sum does in scikit-image, so ``A`` and ``b`` are bitwise
    scikit-image's.
    """
    active = labels >= 0
    unlabelled = labels == 0
    if not unlabelled.any():
        return None
    n_comp, comp = cv2.connectedComponents(active.astype(np.uint8), connectivity=4)
    has_unlabelled = np.bincount(comp[unlabelled], minlength=n_comp) > 0
    has_seed = np.bincount(comp[labels > 0], minlength=n_comp) > 0
    has_seed[0] = False  # component 0 is the inactive background
    if (has_seed & ~has_unlabelled).any():
        return None  # isolated seeds: scikit-image renumbers its graph in a way not reproduced here
    graph = has_seed[comp]  # the active pixels left once scikit-image drops those cut off from every seed
    unknown = unlabelled & graph
    if not unknown.any():
        return None
    right, down = edge_weights(feat, beta)
    nb = _neighbour_weights(right, down, graph)
    h, w = labels.shape
    pix = np.flatnonzero(unknown)
    index = np.full(h * w, -1, np.int64)
    index[pix] = np.arange(pix.size)
    to_nb = nb.reshape(4, -1)[:, pix]  # (4, n): up, left, right, down
    degree = -(((-to_nb[0] + -to_nb[1]) + -to_nb[2]) + -to_nb[3])
    cols = np.empty((pix.size, 5), np.int64)
    vals = np.empty((pix.size, 5))
    lesion = (labels == LESION).ravel()
    rhs = np.zeros(pix.size)
    for k, off in zip((0, 1, 3, 4), (-w, -1, 1, w)):
        j = np.clip(pix + off, 0, h * w - 1)
        weight = to_nb[k if k < 2 else k - 1]
        cols[:, k] = np.where(weight > 0, index[j], -1)
        vals[:, k] = -weight
        rhs += np.where(lesion[j], weight, 0.0)
    cols[:, 2], vals[:, 2] = np.arange(pix.size), degree
    valid = cols >= 0
    indptr = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32)
    a = sparse.csr_array((vals[valid], cols[valid].astype(np.int32), indptr), shape=(pix.size, pix.size))
    return a, rhs, unknown
