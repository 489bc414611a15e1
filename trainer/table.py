"""The comparison table: methods x label fractions x seeds, each cell a fine-tune scored on the test split.

Rows (docs/METHOD.md, section 7.7):

- ``scratch``: supervised from random init;
- ``same-init``: supervised from the init pretraining started from (only with ``weights``; with random init
  it is the ``scratch`` row);
- ``dino``: plain DINO pretraining (``lambda_seg=0``) + fine-tune;
- ``pseudo-only``: pseudo-mask supervision without distillation + fine-tune;
- ``ours``: DINO + auxiliary pseudo-mask loss + fine-tune;
- ``ours+fkd``: ours plus foundation knowledge distillation from a frozen model (DINO-Mix's FKD; needs
  ``fkd_weights``, a local checkpoint: nothing is downloaded);
- ``ours+pic``: ours' pretraining, fine-tuned with progressive imbalance-aware CutMix (DINO-Mix's PIC);
- ``ours+semi``: ours' pretraining, fine-tuned semi-supervised: each step mixes the labelled crops with pool
  crops and their pseudo-masks (``FinetuneConfig.pseudo_shards``; weight and schedule documented there);
- ``ours+ilka``: ours with S^3-Net's I-LKA + deformable-conv decoder (pretraining and fine-tuning);
- ``unet-pseudo``: a small U-Net (:mod:`trainer.models.unet`) trained on the pseudo-masks alone
  (:mod:`trainer.train.unet_pseudo`), then fine-tuned with the same labels: no DINO, no ViT. Ours must beat it to
  claim that self-distillation adds anything beyond the pseudo-masks;
- ``pseudo-masks``: the test images' own pseudo-masks scored as predictions (no label used at all);
- ``ours+fuse``, ``ours+semi+fuse``, ``unet-pseudo+fuse``: the cells of ``ours`` / ``ours+semi`` /
  ``unet-pseudo`` (run when missing; no new training) rescored with ``fuse``: each test image's probability
  and stage 1's walker probability of it, per image (the per-image choice, :mod:`trainer.inference.choice`;
  ``finetune --fuse`` and ``predict --fuse``); ``ours+fixed``, ``ours+semi+fixed``: the same with the fixed
  weight (``--fusion fixed``);
- ``ours-r2``: one self-training round after ``ours``' pretraining (``refine``: the pool relabelled by ours'
  student, the student trained on); ``ours-r2+semi`` fine-tunes it beside its relabelled pool; ``ours-r2+fuse``,
  ``ours-r2+semi+fuse`` rescore those with the per-image choice;
- ``ours-r2+semi+advised`` (``+fuse``): as ``ours-r2+semi``, with the labels of the images ``advise`` ranks
  first in round 2's pool (training images only) instead of a random draw of the same number;
- ``pseudo-masks-r2``: the test images' round-2 pseudo-masks (their stage-1 shards relabelled by ours' student,
  no label used).

Columns: **0 labels** (frac 0) for every row whose pretraining trained a segmentation decoder (``pseudo-only``,
``ours``, ``ours+fkd``, ``ours+ilka``, ``ours-r2``, ``unet-pseudo``): the pretrained model used directly as the segmenter
(:func:`trainer.models.segmenter.load_seg_model` on its export), and the pseudo-masks; then one column per FRAC.

Every cell writes its own folder; a rerun skips finished cells. Outputs: ``results.csv`` (one line per cell),
``results.md`` (mean +- std), ``results.png`` (Jaccard vs labelled images, one line per method).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common import datasets
from common.atomic import save_figure, write_text
from common.guard import check_not_being_written, check_out_dir, output_folder
from pipeline.export import export_masks
from pipeline.run import RunConfig, run_pseudomasks
from pipeline.shards import ShardReader, shards_to_read
from trainer.data.cutmix import PICConfig
from trainer.data.splits import split_dataset
from trainer.engine.export import EXPORT
from trainer.eval import scoring  # called through the modules: tests replace the loops and the scoring
from trainer.eval.metrics import binary_scores
from trainer.inference import advise as advise_loop
from trainer.inference.relabel import relabel
from trainer.train import finetune as finetune_loop
from trainer.train import pretrain as pretrain_loop
from trainer.train import refine as refine_loop
from trainer.train import unet_pseudo as unet_loop
from trainer.train.config import PretrainConfig
from trainer.train.presets import finetune_preset, pretrain_preset, unet_pseudo_preset
from trainer.train.refine import RefineConfig, round_dir

log = logging.getLogger(__name__)

PRETRAINED = {"dino": {"lambda_seg": 0.0}, "pseudo-only": {"distill": False}, "ours": {}, "ours+fkd": {},
              "ours+ilka": {"decoder": "ilka"}}
REFINED = {"ours-r2": "ours"}  # one self-training round (refine) after that row's pretraining
FINETUNE_VARIANTS = {"ours+pic": "ours", "ours+semi": "ours",  # another row's pretraining, fine-tuned differently
                     "ours-r2+semi": "ours-r2", "ours-r2+semi+advised": "ours-r2"}
ADVISED = ("ours-r2+semi+advised",)  # labels of the images advise ranks first, not a random draw
# a row's cells rescored with fuse (no training of their own): the per-image choice, or (FIXED) the fixed weight
FUSED = {"ours+fuse": "ours", "ours+semi+fuse": "ours+semi", "unet-pseudo+fuse": "unet-pseudo",
         "ours+fixed": "ours", "ours+semi+fixed": "ours+semi", "ours-r2+fuse": "ours-r2",
         "ours-r2+semi+fuse": "ours-r2+semi", "ours-r2+semi+advised+fuse": "ours-r2+semi+advised"}
FIXED = ("ours+fixed", "ours+semi+fixed")
METHODS = ("scratch", "same-init", "unet-pseudo", "dino", "pseudo-only", "ours", "ours+fkd", "ours+pic", "ours+semi",
           "ours+ilka", "unet-pseudo+fuse", "ours+fixed", "ours+semi+fixed", "ours+fuse", "ours+semi+fuse",
           "ours-r2", "ours-r2+semi", "ours-r2+fuse", "ours-r2+semi+fuse", "ours-r2+semi+advised",
           "ours-r2+semi+advised+fuse", "pseudo-masks", "pseudo-masks-r2")
ZERO_LABEL_ROWS = ("unet-pseudo", "pseudo-only", "ours", "ours+fkd", "ours+ilka", "ours-r2")  # decoders on pseudo-masks
UNET = "unet-pseudo"
METRICS = ("jaccard", "dice", "thresholded_jaccard", "accuracy", "sensitivity", "specificity")
RESULTS = ("results.csv", "results.md", "results.png")  # the files the table writes into its own folder


@dataclass(frozen=True)
class TableSpec:
    data: tuple[str, ...]
    out: str
    test_data: tuple[str, ...] = ()
    unlabelled: tuple[str, ...] = ()
    fracs: tuple[float, ...] = (0.002, 0.005, 0.01, 0.05)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    preset: str = "cpu"
    weights: str | None = None
    pretrain_epochs: int | None = None
    finetune_iters: int | None = None
    jobs: int = 1
    device: str = "auto"
    shards: str | None = None                  # reuse these pseudo-mask shards instead of making them
    pretrained: tuple[tuple[str, str], ...] = ()  # (method, run dir holding export.pt) to reuse
    fkd_teacher: str | None = None             # timm name of the frozen FKD teacher (inferred from an export)
    fkd_weights: str | None = None             # its local checkpoint (the ours+fkd row needs one)
    fkd_weight: float = 1.0


def _pretrain_overrides(method: str, spec: TableSpec) -> dict:
    if method != "ours+fkd":
        return PRETRAINED[method]
    if not spec.fkd_weights:
        raise ValueError("method 'ours+fkd' needs --fkd-weights: a local checkpoint of the frozen teacher (e.g. a "
                         "DINOv2 ViT file you have, or another run's export.pt); nothing is downloaded")
    return {"fkd_teacher": spec.fkd_teacher, "fkd_weights": spec.fkd_weights, "fkd_weight": spec.fkd_weight}


def _finetune_overrides(method: str, shard_dir: Path | None = None, round_shards: Path | None = None) -> dict:
    if method == "ours+pic":
        return {"pic": PICConfig()}
    if method == "ours+semi":
        return {"pseudo_shards": str(shard_dir)}
    if method in ("ours-r2+semi", "ours-r2+semi+advised"):  # the pool as round 2 relabelled it
        return {"pseudo_shards": str(round_shards)}
    return {}


def _round_shards(exports: dict[str, Path]) -> Path | None:
    """The relabelled pool of the ``ours-r2`` row: ``round-2/shards`` beside its run folder."""
    run = exports.get("ours-r2")
    return None if run is None else Path(run).parent.parent / "shards"


def _cell_dir(out: Path, method: str, frac: float, seed: int) -> Path:
    return out / "cells" / f"{method}-frac{frac:g}-seed{seed}"


def run_table(spec: TableSpec, *, progress: bool = True) -> Path:
    """Run (or finish) the grid and write the results; return the path of ``results.md``."""
    out = Path(spec.out)
    unknown = set(spec.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    bad = [f for f in spec.fracs if not 0 < f <= 1]  # nan fails this too
    if bad:
        raise ValueError(f"fracs: each must be in (0, 1] (0.01 means 1 % of the labels), got {bad[0]}")
    check_out_dir(out, spec.data + spec.unlabelled + spec.test_data)
    # a +fuse row rescores its base row's cells: the base runs too, and before it
    _test_splits.cache_clear()  # the data may have changed since an earlier run in this process
    plain = [FUSED.get(m, m) for m in spec.methods]
    spec = dataclasses.replace(spec, methods=tuple(dict.fromkeys(plain + [m for m in spec.methods if m in FUSED])))
    labelled = datasets.open_dataset(spec.data).labelled  # every mask checked before any long work
    finetune_loop.check_before_training(labelled + tuple(datasets.open_dataset(spec.test_data).labelled
                                                         if spec.test_data else ()), progress=progress)
    test_ids = set()
    for folder in spec.test_data:
        test_ids |= set(datasets.open_dataset(folder).ids)
    if spec.shards:  # refused now, not after the first long step, while its pseudomasks run is still going
        check_not_being_written(spec.shards)
    # one table run per folder; each step below (pseudomasks, pretrain, finetune...) also guards its own folder
    with output_folder(out, command="table", names=RESULTS, inputs=spec.data + spec.unlabelled + spec.test_data):
        exports, base_pre = _pretraining_phase(spec, out, test_ids, progress=progress)
        rows = _zero_label_rows(spec, out, exports, progress=progress)
        rows += _finetune_grid(spec, out, exports, base_pre, progress=progress)
        if "pseudo-masks" in spec.methods or "pseudo-masks-r2" in spec.methods:
            rows += _pseudo_mask_rows(spec, out, progress=progress)
        if "pseudo-masks-r2" in spec.methods:
            rows += _round_two_rows(spec, out, exports["ours"], progress=progress)
        return write_results(rows, out)


def _pretraining_phase(spec: TableSpec, out: Path, test_ids: set[str], *, progress: bool
                       ) -> tuple[dict[str, Path], PretrainConfig]:
    """Pseudo-masks (unless given) and one pretraining per pretrained row; the exports by row, and the preset."""
    shard_dir = Path(spec.shards) if spec.shards else out / "shards"
    reused = {m: Path(d) / ("model.pt" if m == UNET else EXPORT) for m, d in spec.pretrained}
    wanted = [FUSED.get(m, m) for m in spec.methods]
    wanted += [FINETUNE_VARIANTS[m] for m in wanted if m in FINETUNE_VARIANTS]
    wanted += [REFINED[m] for m in wanted if m in REFINED and m not in reused]
    wanted += ["ours"] if "pseudo-masks-r2" in spec.methods else []
    pretrain_needed = [m for m in PRETRAINED if m in wanted]
    overrides = {m: _pretrain_overrides(m, spec) for m in pretrain_needed}  # errors before any long work
    unet_needed = UNET in wanted and UNET not in reused
    if (unet_needed or any(m not in reused for m in pretrain_needed)) and not spec.shards:
        log.info("table: pseudo-masks for %s", ", ".join(spec.data + spec.unlabelled))
        summary = run_pseudomasks(list(spec.data + spec.unlabelled), shard_dir, config=RunConfig(), jobs=spec.jobs,
                                  progress=progress, exclude_ids=test_ids)
        log.info("%s", summary.line())
    base_pre = pretrain_preset(spec.preset)
    if spec.pretrain_epochs:
        base_pre = dataclasses.replace(base_pre, epochs=spec.pretrain_epochs)
    if spec.weights:
        base_pre = dataclasses.replace(base_pre, weights=spec.weights)
    exports = {}
    if UNET in wanted:
        exports[UNET] = reused.get(UNET) or unet_loop.train_unet_on_pseudomasks(
            shard_dir, out / f"pretrain-{UNET}", unet_pseudo_preset(spec.preset, img_size=base_pre.img_size),
            exclude_ids=test_ids, device=spec.device, progress=progress)
    for method in pretrain_needed:
        if method in reused:
            exports[method] = reused[method]
            continue
        run_dir = out / f"pretrain-{method}"
        config = dataclasses.replace(base_pre, **overrides[method])
        if not (run_dir / EXPORT).exists():
            log.info("table: pretraining '%s' into %s", method, run_dir)
            pretrain_loop.pretrain(shard_dir, run_dir, config, device=spec.device, exclude_ids=test_ids,
                                   progress=progress)
        exports[method] = run_dir / EXPORT
    for method, base in REFINED.items():
        if method not in wanted:
            continue
        if method in reused:
            exports[method] = reused[method]
            continue
        log.info("table: one self-training round after '%s' into %s", base, out / "refine")
        refine_loop.refine(shard_dir, exports[base].parent, out / "refine", config=RefineConfig(rounds=1),
                           device=spec.device, exclude_ids=test_ids, progress=progress)
        exports[method] = round_dir(out / "refine", 2) / "pretrain" / EXPORT
    return exports, base_pre


def _zero_label_rows(spec: TableSpec, out: Path, exports: dict[str, Path], *, progress: bool) -> list[dict]:
    """The 0-labels column: each pretrained segmenter (:data:`ZERO_LABEL_ROWS`) scored on the test split as is."""
    rows = []
    for method in ZERO_LABEL_ROWS:
        if method not in spec.methods or method not in exports:
            continue
        cell = _cell_dir(out, method, 0.0, 0)
        metrics_path = cell / "metrics.json"
        if not metrics_path.exists():
            log.info("table: %s with 0 labels (the pretrained decoder as the segmenter)", method)
            scoring.score_model(exports[method], _test_splits(spec), cell, device=spec.device, progress=progress)
        rows.append(_row(method, 0.0, 0, json.loads(metrics_path.read_text())))
        for fused in [f for f, base in FUSED.items() if base == method and f in spec.methods]:
            rows.append(_fused_cell(spec, out, fused, 0.0, 0, exports[method], progress=progress))
    return rows


def _fused_cell(spec: TableSpec, out: Path, method: str, frac: float, seed: int, model_path: Path, *,
                progress: bool) -> dict:
    """One ``+fuse`` (``+fixed``) cell: the base cell's model (or the export, with 0 labels) rescored with the
    per-image choice (the fixed-weight fusion)."""
    cell = _cell_dir(out, method, frac, seed)
    metrics_path = cell / "metrics.json"
    if not metrics_path.exists():
        log.info("table: %s, frac %g, seed %d (%s rescored, fused with the walker)", method, frac, seed, model_path)
        scoring.score_model(model_path, _test_splits(spec), cell, device=spec.device, progress=progress,
                            fuse=True, fusion="fixed" if method in FIXED else "choice",
                            predict_scale=finetune_preset(spec.preset).predict_scale)
    return _row(method, frac, seed, json.loads(metrics_path.read_text()))


@functools.lru_cache(maxsize=4)
def _test_splits(spec: TableSpec):
    """The table's splits (the test split scored by the 0-labels and ``+fuse`` cells), made once per table run."""
    test = datasets.open_dataset(list(spec.test_data), require_masks=True) if spec.test_data else None
    return split_dataset(datasets.open_dataset(list(spec.data)), test=test)


def _finetune_grid(spec: TableSpec, out: Path, exports: dict[str, Path], base_pre: PretrainConfig, *,
                   progress: bool) -> list[dict]:
    """Every (fraction, seed, row) fine-tune cell not finished yet, then one result row per cell."""
    base_ft = finetune_preset(spec.preset)
    if spec.finetune_iters:
        base_ft = dataclasses.replace(base_ft, iters=spec.finetune_iters)
    rows = []
    for frac in spec.fracs:
        for seed in spec.seeds:
            for method in spec.methods:
                if method.startswith("pseudo-masks") or (method == "same-init" and not spec.weights):
                    continue
                if method in FUSED:  # its base comes earlier in spec.methods: its cell is done
                    base_model = _cell_dir(out, FUSED[method], frac, seed) / finetune_loop.MODEL
                    rows.append(_fused_cell(spec, out, method, frac, seed, base_model, progress=progress))
                    continue
                cell = _cell_dir(out, method, frac, seed)
                metrics_path = cell / "metrics.json"
                if not metrics_path.exists():
                    if method in exports or method in FINETUNE_VARIANTS:
                        ft = dataclasses.replace(base_ft, init="pretrain", seed=seed,
                                                 **_finetune_overrides(method, Path(spec.shards or out / "shards"),
                                                                       _round_shards(exports)))
                        checkpoint = exports[FINETUNE_VARIANTS.get(method, method)]
                    else:
                        init = f"weights:{spec.weights}" if method == "same-init" else "scratch"
                        ft = dataclasses.replace(base_ft, init=init, arch=base_pre.arch, img_size=base_pre.img_size,
                                                 seed=seed, decoder="fresh", decoder_hidden=base_pre.decoder_hidden,
                                                 patch_size=base_pre.patch_size, decoder_skip=base_pre.decoder_skip)
                        checkpoint = None
                    labels = _advised(spec, out, frac, exports, progress=progress) if method in ADVISED else None
                    log.info("table: %s, frac %g, seed %d", method, frac, seed)
                    finetune_loop.finetune(list(spec.data), frac, cell, checkpoint=checkpoint,
                                           test_data=list(spec.test_data) or None, config=ft, device=spec.device,
                                           progress=progress, labels_from=labels)
                rows.append(_row(method, frac, seed, json.loads(metrics_path.read_text())))
    return rows


def _advised(spec: TableSpec, out: Path, frac: float, exports: dict[str, Path], *, progress: bool) -> Path:
    """``advise.csv`` of as many images as ``frac`` draws at random, chosen from the training pool only (the
    validation and test ids left out) of round 2's relabelled pool; made once per fraction."""
    splits = _test_splits(spec)
    n = max(1, round(frac * len(splits.train)))
    folder = out / f"advise-{n}"
    if not (folder / "advise.csv").exists():
        held = {s.id for s in splits.validation} | {s.id for s in splits.test}
        train = {s.id for s in splits.train}
        pool_ids = _pool_ids(_round_shards(exports))
        advise_loop.advise(_round_shards(exports), folder, n=n, device=spec.device, progress=progress,
                           exclude_ids=held | (pool_ids - train))
    return folder / "advise.csv"


def _pool_ids(shards: Path) -> set[str]:
    ids: set[str] = set()
    for path in shards_to_read(shards):
        with ShardReader(path) as shard:
            ids |= set(shard.ids)
    return ids


def _row(method: str, frac: float, seed: int, metrics: dict) -> dict:
    return {"method": method, "frac": frac, "seed": seed, "n_labelled": metrics.get("n_labelled", 0),
            **{k: metrics["mean"][k] for k in METRICS if k in metrics["mean"]}}


def _pseudo_mask_rows(spec: TableSpec, out: Path, *, progress: bool) -> list[dict]:
    """Score the pseudo-masks of the test images themselves (no label used) as a constant row."""
    splits = _test_splits(spec)
    cell = out / "cells" / "pseudo-masks"
    metrics_path = cell / "metrics.json"
    if not metrics_path.exists():
        folder = cell / "test-images"
        folder.mkdir(parents=True, exist_ok=True)
        for s in splits.test:  # a view of exactly the test split, without copying images
            link = folder / s.image.name
            if not link.exists():
                link.symlink_to(s.image.resolve())
        run_pseudomasks(folder, cell / "shards", config=RunConfig(), jobs=spec.jobs, progress=progress)
        _score_exported(cell / "shards", cell, splits, progress=progress)
    metrics = json.loads(metrics_path.read_text())
    return [_row("pseudo-masks", frac, 0, metrics) for frac in (0.0, *spec.fracs)] \
        if "pseudo-masks" in spec.methods else []


def _round_two_rows(spec: TableSpec, out: Path, first_student: Path, *, progress: bool) -> list[dict]:
    """The test images' round-2 pseudo-masks: their stage-1 shards relabelled by ``ours``' student (the per-image
    choice, as ``refine`` relabels the pool), scored as a constant row."""
    cell = out / "cells" / "pseudo-masks-r2"
    if not (cell / "metrics.json").exists():
        relabel(out / "cells" / "pseudo-masks" / "shards", first_student, cell / "shards", device=spec.device,
                progress=progress)
        _score_exported(cell / "shards", cell, _test_splits(spec), progress=progress)
    metrics = json.loads((cell / "metrics.json").read_text())
    return [_row("pseudo-masks-r2", frac, 0, metrics) for frac in (0.0, *spec.fracs)]


def _score_exported(shards: Path, cell: Path, splits, *, progress: bool) -> None:
    """Export the shards' masks at each test image's original size into ``cell/predictions`` and score them."""
    export_masks(shards, cell / "predictions", progress=progress)
    per = []
    for s in splits.test:
        pred = cell / "predictions" / f"{s.id}_segmentation.png"
        if pred.exists():
            per.append({"id": s.id, **binary_scores(datasets.read_mask(pred), datasets.read_mask(s.mask))})
    means = {k: float(np.mean([r[k] for r in per])) for k in METRICS}
    write_text(cell / "metrics.json", json.dumps({"mean": means, "n_test": len(per), "per_image": per,
                                                  "n_labelled": 0}, indent=1))


def write_results(rows: Sequence[dict], out: Path) -> Path:
    """``results.csv``, ``results.md`` (mean +- std per method and fraction) and ``results.png``."""
    out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "frac", "seed", "n_labelled", *METRICS]
    lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
    write_text(out / "results.csv", "\n".join(lines) + "\n")
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fracs = sorted({r["frac"] for r in rows})
    md = ["| method | " + " | ".join("0 labels" if f == 0 else f"FRAC {f:g} (n={_n(rows, f)})" for f in fracs)
          + " |",
          "|---|" + "---|" * len(fracs)]
    for m in methods:
        cells = []
        for f in fracs:
            v = [r["jaccard"] for r in rows if r["method"] == m and r["frac"] == f]
            t = [r["thresholded_jaccard"] for r in rows if r["method"] == m and r["frac"] == f]
            cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} (thr. {np.mean(t):.3f})" if v else "")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    header = ("Mean Jaccard ± std over seeds (thresholded Jaccard in brackets) on the test split; "
              "n = labelled images.\n\n")
    write_text(out / "results.md", header + "\n".join(md) + "\n")
    _plot(rows, methods, out / "results.png")
    return out / "results.md"


def _n(rows, frac) -> int:
    ns = [r["n_labelled"] for r in rows if r["frac"] == frac and r["n_labelled"]]
    return int(ns[0]) if ns else 0


def _plot(rows, methods, path: Path) -> None:
    import matplotlib  # imported when a picture is drawn, not at start-up (it costs about a second)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    all_fracs = sorted({r["frac"] for r in rows})
    position = {f: k for k, f in enumerate(all_fracs)}  # evenly spaced, one tick per label count
    for m in methods:
        fracs = sorted({r["frac"] for r in rows if r["method"] == m})
        x = [position[f] for f in fracs]
        vals = [[r["jaccard"] for r in rows if r["method"] == m and r["frac"] == f] for f in fracs]
        style = "--" if m == "pseudo-masks" else "-o"
        ax.errorbar(x, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], fmt=style, capsize=3, label=m)
    ax.set_xticks(range(len(all_fracs)), [str(_n(rows, f)) for f in all_fracs])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (0: the pretrained model as is)")
    ax.set_ylabel("mean Jaccard on the test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def read_results(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
