"""Relabel a pool with a trained model: a self-training round's shards (docs/METHOD.md, section 6.4).

Every sample of stage 1's shards is segmented by the model (a pretraining ``export.pt`` or a ``model.pt``) on its
stored, hair-removed image, and the per-image choice (:mod:`trainer.inference.choice`) decides between the
student's mask and the walker's. The new shards (same names, same ids, the same schema) keep everything stage 1
stored and gain, per sample, the model's probability (``model_prob``), stage 1's own mask (``walker_mask``), the
agreement of the two, the confidence built on it (``diag/confidence``; stage 1's moves to
``diag/walker_confidence``), the model's share of the chosen probability (``diag/model_weight``), the source
(``diag/source``: 0 walker, 1 both, 2 student) and the training weight (``diag/train_weight``: 0 for the least
confident ``leave_out`` share, 1 otherwise). ``pseudo_mask`` is the chosen mask and ``prob`` the chosen
probability (calibrated so that 0.5 is the cut: the trainer's uncertain band applies to it as to stage 1's).

The folder records the model file's sha256 and the source shards' checksums in every shard's ``config`` and in
``manifest.json``; a rerun reuses a finished shard only when both match and its bytes are whole, so the same
folder never mixes the labels of two models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.guard import output_folder, sha256_file
from pipeline.pseudomask import seeds
from pipeline.run import library_versions
from pipeline.shards import (
    MANIFEST,
    REJECTS,
    ShardReader,
    ShardRecord,
    read_manifest,
    shards_to_read,
    write_manifest,
    write_shard,
)
from common.atomic import write_text
from trainer.engine.distributed import resolve_device
from trainer.inference.agreement import mask_agreement
from trainer.inference.choice import (
    SOURCES,
    ChoiceConfig,
    PoolReference,
    agreed_reference,
    choose,
    confidence_of,
    fit_reference,
    image_lab,
    mask_features,
)
from trainer.inference.fusion import fuse_probabilities
from trainer.inference.masks import mask_from_probability
from trainer.inference.segment import PREDICT_SCALE, predict_probability, predict_size
from trainer.models.segmenter import load_seg_model

__all__ = ["RelabelConfig", "RelabelSummary", "relabel", "relabel_info"]

log = logging.getLogger(__name__)

#: Where a relabelled folder records the model, the source and the pool reference.
RELABEL_KEY = "relabel"


@dataclass(frozen=True)
class RelabelConfig:
    """What decides a round's shards besides the model and the source shards.

    ``choice``: :class:`~trainer.inference.choice.ChoiceConfig`; ``leave_out``: the share of the pool, least
    confident first, whose training weight is 0; ``predict_scale``: the model segments each stored image at this
    multiple of its training input size (as ``predict`` does).
    """

    choice: ChoiceConfig = field(default_factory=ChoiceConfig)
    leave_out: float = 0.15
    predict_scale: float = PREDICT_SCALE

    def __post_init__(self):
        if not 0.0 <= self.leave_out < 1.0:
            raise ValueError(f"leave_out: expected a share in [0, 1), got {self.leave_out}")


@dataclass
class RelabelSummary:
    out_dir: Path
    n_samples: int
    n_reused_shards: int
    sources: dict[str, int]
    mean_agreement: float
    reference: PoolReference

    def line(self) -> str:
        counts = ", ".join(f"{self.sources.get(s, 0)} {s}" for s in SOURCES)
        return (f"relabelled {self.n_samples} sample(s) into {self.out_dir} ({self.n_reused_shards} shard(s) kept "
                f"from an earlier run): chosen masks {counts}; mean student-walker agreement "
                f"{self.mean_agreement:.3f}")


@dataclass
class _Sample:
    """One pool sample during relabelling: what stage 1 stored, and the student's view of it."""

    shard: str
    row: int
    record: dict
    diagnostics: dict[str, float]
    student_prob: np.ndarray  # (S, S) float32
    student_mask: np.ndarray  # (S, S) bool
    walker_mask: np.ndarray   # (S, S) bool
    implausible: np.ndarray   # (S, S) bool: seeds.implausible_colour of the stored image
    features: tuple[np.ndarray | None, np.ndarray]  # mask_features of the walker's mask (None: none) and student's
    agreement: float = 0.0


def relabel(shards: str | Path, model_path: str | Path, out_dir: str | Path, *,
            config: RelabelConfig = RelabelConfig(), device: str = "auto", progress: bool = True) -> RelabelSummary:
    """Write a self-training round's shards: ``shards`` relabelled with the model at ``model_path``.

    Parameters
    ----------
    shards : path
        Stage 1's output folder (``pseudomasks``).
    model_path : path
        A pretraining ``export.pt`` or a ``model.pt`` (:func:`trainer.models.segmenter.load_seg_model`).
    out_dir : path
        The round's shards folder; not the source folder. Rerunning resumes.

    Returns
    -------
    RelabelSummary
    """
    shards, model_path = Path(shards), Path(model_path)
    sources = shards_to_read(shards)  # refused while a pseudomasks run is still writing them
    if not sources:
        raise FileNotFoundError(f"{shards}: no shard files (shard-*.h5); run 'pseudomasks' first")
    source_manifest = {e["file"]: e.get("sha256") for e in read_manifest(shards).get("shards", [])}
    model_sha = sha256_file(model_path)
    settings = {"config": json.loads(json.dumps(dataclasses.asdict(config))),
                "model": {"path": str(model_path), "sha256": model_sha},
                "source": {"path": str(shards), "shards": {p.name: source_manifest.get(p.name) or sha256_file(p)
                                                           for p in sources}}}
    config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    names = [p.name for p in sources] + [MANIFEST, REJECTS]
    # the writer rule: never into the source, never over files no run wrote, one run per folder
    with output_folder(out_dir, command="relabel", names=names, inputs=[shards, model_path],
                       flat_inputs=True) as ledger:
        return _relabel_locked(sources, model_path, ledger.folder, config, settings, config_hash, device=device,
                               progress=progress)


def _relabel_locked(sources: list[Path], model_path: Path, out_dir: Path, config: RelabelConfig, settings: dict,
                    config_hash: str, *, device: str, progress: bool) -> RelabelSummary:
    old = read_manifest(out_dir)
    done = {e["file"]: e for e in old.get("shards", [])
            if old.get(RELABEL_KEY, {}).get("config_hash") == config_hash and _intact(out_dir / e["file"], e)}
    reference = (PoolReference.from_dict(old[RELABEL_KEY]["reference"])
                 if done and "reference" in old.get(RELABEL_KEY, {}) else None)
    for path in sources:  # this folder's own shards (claimed in its ledger) that cannot be kept
        if path.name not in done:
            (out_dir / path.name).unlink(missing_ok=True)
    todo = [p for p in sources if p.name not in done]
    model, info = load_seg_model(model_path)
    dev = resolve_device(device)
    model.to(dev)
    size = predict_size(int(info["img_size"]), config.predict_scale)
    samples = _segment_pool(todo if reference is not None else sources, model, size, dev, progress=progress)
    if reference is None:
        reference = _pool_reference(samples, config.choice)
    extra = {RELABEL_KEY: {**settings, "config_hash": config_hash, "reference": json.loads(reference.to_json())}}
    entries = dict(done)
    decided = [(s, _decide(s, reference, config.choice)) for s in samples]
    left_out = _left_out(decided, config.leave_out, old_extra=old.get(RELABEL_KEY) if done else None)
    extra[RELABEL_KEY]["left_out"] = left_out
    left_out = set(left_out)
    by_shard: dict[str, list] = {}
    for s, d in decided:
        by_shard.setdefault(s.shard, []).append((s, d))
    counts = {name: 0 for name in SOURCES}
    for path in todo:
        records = [_record(s, d, s.record["id"] in left_out) for s, d in by_shard.get(path.name, [])]
        for _, d in by_shard.get(path.name, []):
            counts[d["source"]] += 1
        with ShardReader(path) as source:
            stage1 = source.config
            planned = source.ids
            rejects = source.rejects
        shard_config = json.dumps({**extra, "stage1": stage1}, sort_keys=True)
        digest = write_shard(out_dir / path.name, records, size=records[0].image.shape[0] if records else 256,
                             config_json=shard_config, config_hash=config_hash, planned_ids=planned,
                             rejects=rejects, versions=library_versions())
        entries[path.name] = {"file": path.name, "rows": len(records), "rejected": len(rejects),
                              "no_lesion": sum(r.no_lesion for r in records), "sha256": digest, "seconds": None}
        write_manifest(out_dir, list(entries.values()), extra)
    write_manifest(out_dir, list(entries.values()), extra)
    write_text(out_dir / REJECTS, "")
    agreements = [s.agreement for s in samples]
    return RelabelSummary(out_dir=out_dir, n_samples=sum(e["rows"] for e in entries.values()),
                          n_reused_shards=len(done), sources=counts,
                          mean_agreement=float(np.mean(agreements)) if agreements else float("nan"),
                          reference=reference)


def _intact(path: Path, entry: dict) -> bool:
    return path.exists() and sha256_file(path) == entry.get("sha256")


def _segment_pool(paths: list[Path], model, size: int, device: torch.device, *, progress: bool,
                  batch: int = 32) -> list[_Sample]:
    """The student's probability and mask, and the walker's mask, of every sample of the shards at ``paths``."""
    samples = []
    total = 0
    for p in paths:
        with ShardReader(p) as shard:
            total += len(shard)
    bar = tqdm(total=total, desc="relabel", unit="img", disable=not progress)
    for path in paths:
        with ShardReader(path) as shard:
            diag = shard.diagnostics
            for start in range(0, len(shard), batch):
                rows = list(range(start, min(start + batch, len(shard))))
                records = [shard[r] for r in rows]
                images = torch.from_numpy(np.stack([r["image"] for r in records])).permute(0, 3, 1, 2).contiguous()
                probs = predict_probability(model, images, size=size, device=device)
                for r, record, prob in zip(rows, records, probs):
                    image = record["image"]
                    s = image.shape[0]
                    prob = _resize(prob, s)
                    implausible = seeds.implausible_colour(image)
                    student = mask_from_probability(prob, implausible=implausible)
                    walker = record["pseudo_mask"].astype(bool) & ~record["no_lesion"]
                    lab = image_lab(image)
                    features = (mask_features(walker, lab) if walker.any() else None, mask_features(student, lab))
                    samples.append(_Sample(shard=path.name, row=r, record=record,
                                           diagnostics={k: float(v[r]) for k, v in diag.items()},
                                           student_prob=prob, student_mask=student, walker_mask=walker,
                                           implausible=implausible, features=features,
                                           agreement=mask_agreement(student, walker)))
                bar.update(len(rows))
    bar.close()
    return samples


def _resize(prob: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if prob.shape[0] == size:
        return prob.astype(np.float32)
    return cv2.resize(prob, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _pool_reference(samples: list[_Sample], config: ChoiceConfig) -> PoolReference:
    """The pool's reference: its agreed masks (:func:`agreed_reference`), every mask when too few agree."""
    reference = agreed_reference([s.agreement for s in samples], [s.features for s in samples], config)
    if reference is None:
        reference = fit_reference(np.stack([f for s in samples for f in s.features if f is not None]))
        log.info("relabel: fewer than %d image(s) agreed; pool reference from every mask (%d)",
                 config.min_reference, reference.n)
    else:
        log.info("relabel: pool reference from %d mask(s) of the agreed images", reference.n)
    return reference


def _decide(s: _Sample, reference: PoolReference, config: ChoiceConfig) -> dict:
    """The choice for one sample: its mask, probability, weight, source and confidence."""
    walker_prob = s.record["prob"].astype(np.float32) / 255.0
    cut = s.diagnostics.get("threshold", 0.3)
    cut = cut if np.isfinite(cut) and 0 < cut < 1 else 0.3
    choice = choose(s.agreement, s.features[0], s.features[1], reference, config)
    fused = fuse_probabilities(s.student_prob, None if not s.walker_mask.any() else walker_prob,
                               weight=choice.weight, walker_cut=cut)
    if choice.source == "student":
        mask = s.student_mask
    elif choice.source == "walker":
        mask = s.walker_mask
    else:
        mask = mask_from_probability(fused, implausible=s.implausible)
    confidence = confidence_of(choice, s.diagnostics.get("confidence", float("nan")))
    return {"mask": mask, "prob": fused, "weight": choice.weight, "source": choice.source,
            "agreement": choice.agreement, "confidence": confidence, "scores": choice.scores}


def _left_out(decided: list, share: float, *, old_extra: dict | None) -> list[str]:
    """The ids whose training weight is 0: the ``share`` of the pool with the lowest confidence (ties broken by
    id, so the set does not depend on shard order). Kept from the earlier run when resuming, so that every shard
    uses the same set."""
    if old_extra is not None and "left_out" in old_extra:
        return list(old_extra["left_out"])
    n = int(share * len(decided))
    ranked = sorted(decided, key=lambda sd: (sd[1]["confidence"], sd[0].record["id"]))
    return sorted(s.record["id"] for s, _ in ranked[:n])


def _record(s: _Sample, d: dict, left_out: bool) -> ShardRecord:
    r = s.record
    diagnostics = dict(s.diagnostics)
    diagnostics["walker_confidence"] = diagnostics.pop("confidence", float("nan"))
    diagnostics.update({"confidence": d["confidence"], "agreement": d["agreement"], "model_weight": d["weight"],
                        "source": float(SOURCES.index(d["source"])), "score_walker": d["scores"][0],
                        "score_student": d["scores"][1],
                        "train_weight": 0.0 if left_out else 1.0,
                        "lesion_fraction": float(d["mask"].mean())})
    return ShardRecord(id=r["id"], path=r["path"], orig_shape=tuple(int(v) for v in r["orig_shape"]),
                       image=r["image"], hair_mask=r["hair_mask"].astype(bool), prob=d["prob"],
                       pseudo_mask=d["mask"], no_lesion=not d["mask"].any(), diagnostics=diagnostics,
                       maps={"model_prob": s.student_prob, "walker_mask": s.walker_mask})


def relabel_info(out_dir: str | Path) -> dict | None:
    """What a relabelled folder records about itself (model, source, reference, config), or None for stage 1's
    own shards."""
    return read_manifest(Path(out_dir)).get(RELABEL_KEY)

