"""The pretraining configuration: :class:`PretrainConfig` (every knob, checked when it is made) and the
:class:`Schedules` it gives per global step.

Schedules are precomputed per global step (as in facebookresearch/dino), so resuming needs only the step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from trainer.data.multicrop import MultiCropConfig
from trainer.engine.schedules import cosine_schedule, lambda_ramp
from trainer.losses.dino import CENTERINGS
from trainer.models.decoders import DECODERS
from trainer.models.dino_model import DINOModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining hyper-parameters (facebookresearch/dino defaults for ViT-S/16 unless marked ours).

    ``lr`` is the base rate for a total batch of 256 (scaled linearly, DINO). Warm-ups longer than the run are
    shortened to fit it. ``decoder`` picks the auxiliary decoder (:func:`trainer.models.decoders.build_decoder`);
    ``affine_weight`` and ``spatial_weight`` add S^3-Net's label-free terms on the decoder's output
    (:mod:`trainer.losses.affine`, :mod:`trainer.losses.spatial`), weighted like ``L_seg`` times these factors.

    DINO collapse (the last fields; docs/DINO_COLLAPSE.md): ``student_temp`` and ``center_momentum`` are DINO's
    :math:`\\tau_s` and :math:`m`; ``centering`` is ``"centre"`` (DINO) or ``"sinkhorn"`` (Sinkhorn-Knopp targets,
    DINOv2); ``koleo_weight`` adds ``koleo_weight * L_KoLeo`` on the student's global-view head outputs
    (:mod:`trainer.losses.koleo`); ``masked_patch_weight`` adds iBOT's masked-patch loss
    (:mod:`trainer.losses.masked_patch`: the student's global views with ``masked_patch_ratio`` of their patches
    hidden, in a ``masked_patch_prob`` share of the images, predict the teacher's patch outputs there);
    ``collapse_patience`` is how many steps of collapse the detector tolerates
    before it warns; ``probe_samples`` images of the last shard are held out of training (when the data has at
    least 4x as many) for the linear probe (:mod:`trainer.eval.probe`); 0 turns the probe off.
    """

    arch: str = "vit_small_patch16_224"
    img_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    out_dim: int = 4096
    head_hidden: int = 2048
    bottleneck_dim: int = 256
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    freeze_last_layer: int = 1
    clip_grad: float = 3.0
    drop_path: float = 0.1
    lambda_seg: float = 0.5        # ours
    lambda_ramp_epochs: int = 10   # ours
    distill: bool = True
    band: tuple[float, float] = (0.1, 0.9)  # ours: the walker's uncertain band
    band_weight: float = 0.0                # ours: weight of the band pixels in L_seg
    decoder_hidden: int = 128
    decoder: str = "conv"             # ours: "conv" (SegDecoder) or "ilka" (S^3-Net blocks)
    affine_weight: float = 0.0        # ours: S^3-Net rotation-equivariance term, relative to L_seg
    spatial_weight: float = 0.0       # ours: edge-aware spatial-consistency term, relative to L_seg
    weights: str | None = None
    fkd_teacher: str | None = None   # DINO-Mix FKD: timm name of the frozen foundation ViT (resolved)
    fkd_weights: str | None = None   # its local checkpoint; an edgedino export.pt also gives the name
    fkd_weight: float = 0.0          # weight of L_FKD (0: off)
    seed: int = 0
    num_workers: int = 2
    picture_every: int = 10
    log_every: int = 10
    decoder_skip: bool = True        # ours: the decoder's high-resolution edge path (borders from pixels)
    patch_size: int | None = None    # ours: patch size in place of the arch's own (None: the arch's)
    student_temp: float = 0.1        # DINO's tau_s
    center_momentum: float = 0.9     # DINO's m (1: the centre stays 0, no centring)
    centering: str = "centre"        # "centre" (DINO) or "sinkhorn" (DINOv2's Sinkhorn-Knopp targets)
    koleo_weight: float = 0.0        # KoLeo spreading term on the student's global head outputs (0: off)
    masked_patch_weight: float = 0.0  # iBOT-style masked-patch distillation on the global views (0: off)
    masked_patch_ratio: tuple[float, float] = (0.1, 0.5)  # share of a masked image's patches hidden (iBOT)
    masked_patch_prob: float = 0.5   # share of the global views masked at all (iBOT)
    collapse_patience: int = 50      # steps of collapse before the warning
    probe_samples: int = 64          # held-out images for the end-of-run linear probe (0: off)
    min_confidence: float = 0.0      # ours: leave out pseudo-masks whose confidence is below this (0: keep all)
    norm_last_layer: bool = True     # DINO: the head's last layer keeps weight norm 1 (False: it learns)
    decoder_lr_scale: float = 1.0    # ours: the aux decoder learns at lr * this (its own AdamW groups when != 1)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lambda_seg < 0:
            raise ValueError(f"lambda_seg must be >= 0, got {self.lambda_seg}")
        if not self.distill and self.lambda_seg == 0 and self.fkd_weight == 0:
            raise ValueError("no_distill with lambda_seg 0 leaves nothing to train: give --lambda-seg > 0")
        self._check_fkd()
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder: expected one of {DECODERS}, got {self.decoder!r}")
        for name in ("affine_weight", "spatial_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.lambda_seg == 0 and (self.affine_weight > 0 or self.spatial_weight > 0):
            log.warning("affine_weight/spatial_weight act on the decoder, which lambda_seg 0 turns off: ignored")
        self._check_collapse_fields()
        if self.img_size % 16 and self.img_size % 14:
            log.warning("img_size %d is not a multiple of the usual patch sizes (14, 16)", self.img_size)

    def _check_collapse_fields(self) -> None:
        if not self.student_temp > 0:
            raise ValueError(f"student_temp: expected > 0, got {self.student_temp}")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"center_momentum: expected in [0, 1], got {self.center_momentum}")
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering: expected one of {CENTERINGS}, got {self.centering!r}")
        if not self.koleo_weight >= 0:
            raise ValueError(f"koleo_weight: expected >= 0 (0: off), got {self.koleo_weight}")
        if not self.masked_patch_weight >= 0:
            raise ValueError(f"masked_patch_weight: expected >= 0 (0: off), got {self.masked_patch_weight}")
        if self.masked_patch_weight > 0 and not self.distill:
            raise ValueError("masked_patch_weight > 0 needs the teacher: it cannot be used with no_distill")
        lo, hi = self.masked_patch_ratio
        if not (0.0 <= lo <= hi <= 1.0 and 0.0 <= self.masked_patch_prob <= 1.0):
            raise ValueError(f"masked_patch_ratio must be 0 <= low <= high <= 1 and masked_patch_prob in [0, 1], "
                             f"got {self.masked_patch_ratio}, {self.masked_patch_prob}")
        if self.collapse_patience < 1:
            raise ValueError(f"collapse_patience: expected >= 1 step, got {self.collapse_patience}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence: expected a value in [0, 1] (0 keeps every sample), got "
                             f"{self.min_confidence}")
        if not self.decoder_lr_scale > 0:
            raise ValueError(f"decoder_lr_scale: expected > 0, got {self.decoder_lr_scale}")
        if self.probe_samples < 0 or self.probe_samples == 1:
            raise ValueError(f"probe_samples: expected 0 (off) or >= 2, got {self.probe_samples}")

    def _check_fkd(self) -> None:
        if not self.fkd_weight >= 0:
            raise ValueError(f"fkd_weight: expected >= 0 (0: FKD off), got {self.fkd_weight}")
        if self.fkd_weight > 0 and self.fkd_teacher is None and self.fkd_weights is None:
            raise ValueError("fkd_weight > 0 needs fkd_teacher (a timm ViT name such as "
                             "'vit_small_patch14_dinov2', with fkd_weights its local checkpoint) or fkd_weights "
                             "(an edgedino export.pt, whose arch is used)")
        if self.fkd_weight == 0 and (self.fkd_teacher is not None or self.fkd_weights is not None):
            raise ValueError(f"fkd_teacher/fkd_weights given ({self.fkd_teacher!r}, {self.fkd_weights!r}) but "
                             "fkd_weight is 0, which turns FKD off: give fkd_weight > 0 (e.g. 1.0) or drop them")

    def crops(self) -> MultiCropConfig:
        return MultiCropConfig(global_size=self.img_size, local_size=self.local_size, n_local=self.n_local,
                               global_scale=self.global_scale, local_scale=self.local_scale)

    def build_model(self, *, fkd_dim: int | None = None) -> DINOModel:
        """The student network; ``fkd_dim`` (the foundation teacher's width) adds its FKD projector."""
        return DINOModel(self.arch, img_size=self.img_size, out_dim=self.out_dim, decoder_hidden=self.decoder_hidden,
                         decoder=self.decoder, weights=self.weights, drop_path_rate=self.drop_path,
                         head_hidden=self.head_hidden, bottleneck_dim=self.bottleneck_dim, fkd_dim=fkd_dim,
                         decoder_skip=self.decoder_skip, patch_size=self.patch_size,
                         norm_last_layer=self.norm_last_layer, mask_token=self.masked_patch_weight > 0)


@dataclass
class Schedules:
    """A run's values per global step (arrays of ``epochs * steps_per_epoch``): learning rate, weight decay,
    teacher momentum and the weight ``lambda_t`` of ``L_seg``."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    lam: np.ndarray

    @classmethod
    def build(cls, config: PretrainConfig, steps_per_epoch: int, total_batch: int) -> "Schedules":
        total = config.epochs * steps_per_epoch
        warmup = min(config.warmup_epochs, max(config.epochs - 1, 0)) * steps_per_epoch
        ramp = min(config.lambda_ramp_epochs, config.epochs) * steps_per_epoch
        return cls(lr=cosine_schedule(config.lr * total_batch / 256.0, config.min_lr, total, warmup),
                   wd=cosine_schedule(config.weight_decay, config.weight_decay_end, total),
                   momentum=cosine_schedule(config.momentum_teacher, 1.0, total),
                   lam=lambda_ramp(config.lambda_seg, total, max(ramp, 1)))
