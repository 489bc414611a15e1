"""edgedino: train a skin-lesion segmenter when almost nothing is labelled.

Stage 1 (``pseudomasks``) removes hair and makes edge-aware pseudo-masks with a Random Walker, into HDF5
shards; stage 2 (``pretrain``, ``finetune``) learns from them. Run ``python cli.py COMMAND --help``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

EXIT_REJECTS = 3  # pseudomasks finished, but some inputs were rejected (listed in rejects.jsonl)


def _not_built(command: str, issue: int) -> None:
    raise click.ClickException(f"'{command}' is not built yet (issue #{issue} builds it)")


def _parse_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 512x384, got {value!r}") from None
    if w < 32 or h < 32:
        raise click.BadParameter(f"each side must be >= 32 px, got {value!r}")
    return w, h


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120,
                             "terminal_width": 120})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages (per-shard and per-sample detail).")
def main(verbose: bool) -> None:
    """edgedino: self-distillation with edge-aware pseudo-masks for skin-lesion segmentation.

    \b
    Typical run:
      python cli.py synth --out artifacts/synth --n 64          # or use your own data
      python cli.py pseudomasks --data DATA --out artifacts/shards
      python cli.py inspect artifacts/shards --png sheet.png
      python cli.py pretrain --shards artifacts/shards --out artifacts/pretrain
      python cli.py finetune --data DATA --frac 0.01 --checkpoint artifacts/pretrain/export.pt --out ...
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write images/, masks/, hair/ and clean/ into.")
@click.option("--n", "n", default=64, show_default=True, type=click.IntRange(min=1),
              help="Number of images. 64 is enough for the demo; a few hundred for a longer pretraining.")
@click.option("--seed", default=0, show_default=True, help="Dataset seed: image i depends only on (seed, i).")
@click.option("--size", default="512x384", show_default=True,
              help="Image size WIDTHxHEIGHT. Larger images look more like real dermoscopy but cost more.")
@click.option("--jobs", default=1, show_default=True, help="Parallel workers (-1: all cores).")
@click.option("--fov", type=click.Choice(["auto", "circle"]), default="auto", show_default=True,
              help="'circle': every image gets a circular field of view (random radius and offset, black or "
                   "dark-grey corners, darker towards the rim), as on some clinics' dermoscopes. 'auto' keeps "
                   "the usual mix (and byte-identical images).")
@click.option("--lesion", type=click.Choice(["auto", "large"]), default="auto", show_default=True,
              help="'large': lesions that fill 60-100 % of the frame or cross its edge, with a broad pale "
                   "periphery. 'auto' keeps the usual 3-60 % lesions.")
def synth(out: Path, n: int, seed: int, size: str, jobs: int, fov: str, lesion: str) -> None:
    """Generate synthetic dermoscopy images with known lesion and hair masks."""
    from pipeline.synth import write_synthetic_dataset

    ids = write_synthetic_dataset(out, n, seed=seed, size=_parse_size(size), jobs=jobs, fov=fov, lesion=lesion)
    click.echo(f"wrote {len(ids)} synthetic images to {out}")


@main.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Data folder: ISIC 2018 layout, images/ (+ masks/), or a flat folder of images. "
                   "Repeat to combine folders (e.g. a labelled set plus unlabelled images).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for shards, manifest.json and rejects.jsonl. Rerunning resumes.")
@click.option("--jobs", default=1, show_default=True,
              help="Parallel workers (-1: all cores). Output is identical whatever the number.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32),
              help="Storage/training resolution S: images are squashed to SxS. Raise to 384-512 for a "
                   "GPU pretraining at higher resolution.")
@click.option("--shard-size", default=128, show_default=True, type=click.IntRange(min=1),
              help="Samples per shard (one task each). Smaller: finer resume and load balance.")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True,
              help="loky: processes on this machine. dask: a Dask cluster (needs the 'dask' extra).")
@click.option("--scheduler", default=None,
              help="Dask scheduler address (tcp://host:8786). Without it, --backend dask starts a local cluster.")
@click.option("--exclude-from", "exclude_from", multiple=True, type=click.Path(path_type=Path),
              help="Leave out every id found in this data folder (e.g. your external test set). Repeatable.")
@click.option("--overwrite", is_flag=True,
              help="Replace shards made with another configuration instead of refusing to mix them.")
@click.option("--method", type=click.Choice(["walker", "s3net"]), default="walker", show_default=True,
              help="walker: seeds + edge-aware Random Walker (about 0.2 s/image; the better masks on ISIC). "
                   "s3net: per-image unsupervised clustering after S^3-Net, lesion clusters chosen from the "
                   "coarse lesion map (label-free, several times slower). A different method needs a new --out.")
@click.option("--seed", default=0, show_default=True,
              help="Seeds --method s3net per image from (seed, image id); the walker does not use it.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def pseudomasks(data, out, jobs, size, shard_size, backend, scheduler, exclude_from, overwrite, method, seed,
                no_progress):
    """Remove hair and make edge-aware pseudo-masks into HDF5 shards (stage 1)."""
    from pipeline import datasets
    from pipeline.pseudomask import PseudoMaskConfig
    from pipeline.run import RunConfig, run_pseudomasks

    if scheduler and backend != "dask":
        raise click.BadParameter("--scheduler needs --backend dask", param_hint="--scheduler")
    exclude = set()
    for folder in exclude_from:
        exclude |= set(datasets.open_dataset(folder).ids)
    try:
        config = RunConfig(size=size, shard_size=shard_size, seed=seed, pseudo=PseudoMaskConfig(method=method))
        summary = run_pseudomasks(list(data), out, config=config,
                                  jobs=jobs, backend=backend, scheduler=scheduler, overwrite=overwrite,
                                  progress=not no_progress, exclude_ids=exclude)
    except (datasets.DatasetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if exclude:
        click.echo(f"excluded ids from {len(exclude_from)} folder(s): {len(exclude)} id(s) considered")
    for r in summary.rejects[:10]:
        click.echo(f"rejected {r['id']}: {r['reason']}", err=True)
    click.echo(summary.line())
    if summary.n_rejected:
        sys.exit(EXIT_REJECTS)


@main.command()
@click.option("--shards", required=True, type=click.Path(exists=True, path_type=Path),
              help="A shard file or the pseudomasks output folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <ID>_segmentation.png masks at each image's original size (0/255).")
def export(shards: Path, out: Path) -> None:
    """Write pseudo-masks at original size as ISIC-style PNGs (to score or view)."""
    from pipeline.export import export_masks

    n = export_masks(shards, out)
    click.echo(f"wrote {n} mask(s) to {out}")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a contact sheet: original, hair mask, cleaned, probability, contours.")
@click.option("--rows", default=8, show_default=True, help="Samples in the contact sheet.")
@click.option("--min-confidence", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="List the samples whose pseudo-mask confidence is below this. On isic2017_256 the lowest "
                   "10 % by confidence are the weakest masks (README); raise it to see more.")
def inspect(path: Path, png: Path | None, rows: int, min_confidence: float) -> None:
    """Summarise a shard or a folder of shards (counts, config, distributions, rejects)."""
    from pipeline.report import contact_sheet, summarise
    from pipeline.shards import ShardError

    try:
        click.echo(summarise(path, threshold=min_confidence).text())
        if png:
            click.echo(f"contact sheet: {contact_sheet(path, png, n=rows)}")
    except (ShardError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(path: Path) -> None:
    """Re-hash shards against manifest.json and read every chunk; exit 1 on any mismatch."""
    from pipeline.shards import verify as verify_shards

    problems = verify_shards(path)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {path}")
    click.echo(f"ok: every shard in {path} matches manifest.json")


@main.command()
@click.option("--shards", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Pseudo-mask shards (a pseudomasks output folder or shard files). Repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoint-latest.pt, export.pt, log.jsonl, pictures/. Rerunning resumes.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="paper: ViT-S/16, 224/96 px crops, DINO's sizes (a GPU). cpu: ViT-Ti/16 at 96/48 px with "
                   "small heads, minutes on a laptop. auto: paper when CUDA is present, else cpu. "
                   "Options below override the preset.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs in total; rerun with more to continue a run.")
@click.option("--arch", help="Any timm ViT name (random init unless --weights).")
@click.option("--img-size", type=click.IntRange(min=16), help="Global crop size in px (local crops: --local-size).")
@click.option("--local-size", type=click.IntRange(min=16), help="Local crop size in px.")
@click.option("--n-local", type=click.IntRange(min=0), help="Local crops per image (DINO: 8).")
@click.option("--batch-size", type=click.IntRange(min=2), help="Images per step per process.")
@click.option("--lr", type=float, help="Base learning rate per 256 images (DINO: 5e-4).")
@click.option("--out-dim", type=click.IntRange(min=2), help="DINO head width K (4096-8192 for ISIC-sized data).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present (bf16 autocast, pinned memory), else CPU.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False),
              help="Local backbone checkpoint (DINO/DINOv2/DINOv3 file you have); keys checked strictly.")
@click.option("--lambda-seg", type=click.FloatRange(min=0), help="Weight of the pseudo-mask loss (0: plain DINO).")
@click.option("--no-distill", is_flag=True, help="Ablation: pseudo-mask supervision only, no DINO.")
@click.option("--decoder", type=click.Choice(["conv", "ilka"]),
              help="Auxiliary decoder (preset: conv). conv = the light conv decoder; ilka = S^3-Net's Inception "
                   "Large Kernel Attention + deformable conv (larger receptive field, borders that bend; slower "
                   "on CPU). Fine-tuning rebuilds the same kind from export.pt.")
@click.option("--affine-weight", type=click.FloatRange(min=0),
              help="S^3-Net's rotation-equivariance term, relative to the pseudo-mask loss (0: off). Costs one "
                   "more student forward on the global views. Needs --lambda-seg > 0; start at 1 and check in "
                   "log.jsonl that 'affine' falls while 'seg' does not rise.")
@click.option("--spatial-weight", type=click.FloatRange(min=0),
              help="Edge-aware smoothness of the predicted mask, relative to the pseudo-mask loss (0: off). "
                   "Pulls neighbours of similar colour to one label: for ragged predicted borders. Needs "
                   "--lambda-seg > 0; start at 1 and check in log.jsonl that 'spatial' falls while 'seg' does not "
                   "rise.")
@click.option("--fkd-weight", type=click.FloatRange(min=0),
              help="DINO-Mix foundation distillation (FKD), 0 = off: adds W x mean(1 - cos) between the "
                   "student's projected patch tokens and a frozen foundation ViT's, on the global views. Use it "
                   "when you have a strong pretrained ViT on disk and little data; start with 1.0. Needs "
                   "--fkd-teacher and/or --fkd-weights. Costs one frozen forward per step.")
@click.option("--fkd-teacher", metavar="NAME",
              help="timm name of the frozen foundation ViT, e.g. vit_small_patch14_dinov2 or "
                   "vit_base_patch16_224 (patch 14 or 16 both work: its input is resized to the student's "
                   "token grid). May be left out when --fkd-weights is an edgedino export.pt.")
@click.option("--fkd-weights", type=click.Path(exists=True, dir_okay=False),
              help="Local checkpoint of that foundation ViT (a DINOv2/DINOv3/timm file you have, or an "
                   "earlier run's export.pt); keys checked strictly, nothing is downloaded. Without it the "
                   "teacher is random (tests only). Rerun with the same file to resume.")
@click.option("--num-workers", type=click.IntRange(min=0), help="DataLoader workers per process.")
@click.option("--seed", type=int, help="Seed of the crops, sampler and init.")
@click.option("--exclude-from", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Leave out shard samples whose ids are in this data folder (your test set). Repeatable.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def pretrain(shards, out, preset, exclude_from, no_progress, device, no_distill, **options):
    """DINO self-distillation + auxiliary pseudo-mask segmentation (stage 2)."""
    import dataclasses

    from pipeline import datasets
    from trainer.presets import pretrain_preset
    from trainer.pretrain import NonFiniteLoss, pretrain as run_pretrain

    overrides = {k: v for k, v in options.items() if v is not None}
    if no_distill:
        overrides["distill"] = False
    try:
        config = dataclasses.replace(pretrain_preset(preset), **overrides)
        exclude = {i for folder in exclude_from for i in datasets.open_dataset(folder).ids}
        result = run_pretrain(list(shards), out, config, device=device, exclude_ids=exclude,
                              progress=not no_progress)
    except (ValueError, NonFiniteLoss, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if result.resumed_from is not None:
        click.echo(f"resumed from step {result.resumed_from}")
    click.echo(f"done: {result.step} steps; teacher export {out / 'export.pt'}; log {out / 'log.jsonl'}")


@main.command()
@click.option("--data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Labelled data: ISIC 2018 layout (its own splits) or images/ + masks/ (hash split 70/15/15).")
@click.option("--frac", required=True, type=float,
              help="Fraction of the labelled training images to use: 0.002 / 0.005 / 0.01 of ISIC 2018's 2,594 "
                   "are 5 / 13 / 26 images. At least one image is used.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The export.pt written by 'pretrain' (needed for --init pretrain).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: subset.json, predictions/, metrics.json, best_worst.png.")
@click.option("--test-data", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="External labelled test folder; its ids are removed from training and validation.")
@click.option("--seed", default=0, show_default=True, help="Chooses the labelled subset and the training noise.")
@click.option("--init", default="pretrain", show_default=True,
              help="pretrain (the checkpoint's teacher), scratch (random init), or weights:PATH (a local "
                   "backbone file: the same init pretraining started from).")
@click.option("--decoder", type=click.Choice(["aux", "fresh"]), default="aux", show_default=True,
              help="Start the decoder from the pretrained auxiliary head, or from scratch.")
@click.option("--decoder-arch", type=click.Choice(["conv", "ilka"]), default=None,
              help="Decoder kind for scratch/weights inits (default conv): conv = the light conv decoder; ilka = "
                   "S^3-Net's I-LKA + deformable conv (slower on CPU). With --init pretrain the export's kind "
                   "is used.")
@click.option("--arch", default=None, help="timm ViT for scratch/weights inits; with pretrain it must match.")
@click.option("--img-size", type=click.IntRange(min=16), default=None,
              help="Input size (default: the pretraining crop size, else 224).")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help="Optimiser steps (default 300; the cpu preset 120). Few labels: more is rarely better.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="cpu: fewer, smaller steps for a 2-core machine; paper: 300 steps; auto: paper when CUDA is "
                   "present, else cpu.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present, else CPU.")
@click.option("--pic", is_flag=True,
              help="Progressive imbalance-aware CutMix (DINO-Mix's PIC): mix each batch with boxes centred first "
                   "on the minority class (lesion or skin, by area), annealing to plain CutMix. Try it when "
                   "lesions are very small or very large.")
@click.option("--pic-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --pic: chance that a batch is mixed.")
@click.option("--pic-anneal", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="With --pic: fraction of the iterations over which the minority bias falls to uniform.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def finetune(data, frac, checkpoint, out, test_data, seed, init, decoder, decoder_arch, arch, img_size, iters, preset,
             device, pic, pic_prob, pic_anneal, no_progress):
    """Fine-tune with a fraction of the expert labels and report ISIC metrics."""
    import dataclasses

    from pipeline import datasets
    from trainer.finetune import finetune as run_finetune
    from trainer.presets import finetune_preset

    if init == "pretrain" and checkpoint is None:
        raise click.BadParameter("--init pretrain needs --checkpoint PATH (the export.pt of 'pretrain')",
                                 param_hint="--checkpoint")
    overrides = {"seed": seed, "init": init, "decoder": decoder, "arch": arch, "img_size": img_size, "iters": iters,
                 "decoder_arch": decoder_arch}
    if pic:
        from trainer.cutmix import PICConfig

        overrides["pic"] = PICConfig(prob=pic_prob, anneal=pic_anneal)
    config = dataclasses.replace(finetune_preset(preset), **{k: v for k, v in overrides.items() if v is not None})
    try:
        result = run_finetune(list(data), frac, out, checkpoint=checkpoint, test_data=list(test_data) or None,
                              config=config, device=device, progress=not no_progress)
    except (ValueError, FileNotFoundError, datasets.DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"labelled images: {len(result.subset_ids)} (ids in {out / 'subset.json'}); best validation "
               f"Jaccard {result.best_val_jaccard:.4f} at iteration {result.best_iter}")
    for name, value in result.means.items():
        click.echo(f"{name:>20}: {value:.4f}")
    click.echo(f"predictions: {out / 'predictions'}   metrics: {out / 'metrics.json'}   "
               f"pictures: {out / 'best_worst.png'}")


@main.command()
@click.option("--pred", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of predicted <ID>_segmentation.png masks.")
@click.option("--truth", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of expert masks (<ID>_segmentation.png), or a data folder with masks/.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write per-image and mean metrics to this JSON file.")
def evaluate(pred: Path, truth: Path, json_out: Path | None) -> None:
    """Score predicted masks against expert masks like ISIC (Jaccard, Dice, thresholded Jaccard...)."""
    from trainer.metrics import evaluate_folders, write_metrics_json

    if (truth / "masks").is_dir():
        truth = truth / "masks"
    try:
        result = evaluate_folders(pred, truth, allow_extra=True)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(result.rows)} image(s) scored")
    for name, value in result.means.items():
        click.echo(f"{name:>20}: {value:.4f}")
    if json_out:
        write_metrics_json(result, json_out)
        click.echo(f"per-image metrics: {json_out}")


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.002,0.01, got {value!r}") from None


@main.command()
@click.option("--data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Labelled data (the pool FRAC samples from; also pretraining data).")
@click.option("--unlabelled", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Extra unlabelled images for pseudo-masks and pretraining. Repeatable.")
@click.option("--test-data", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="External labelled test folder (its ids are excluded everywhere else).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Table folder: shards, pretrain-*, cells/, results.md/csv/png. Rerunning skips finished cells.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="cpu: ViT-Ti/16 at 96 px, minutes per cell on 2 cores. paper: ViT-S/16 at 224 px (a GPU). "
                   "auto: paper when CUDA is present, else cpu.")
@click.option("--fracs", default="0.002,0.005,0.01,0.05", show_default=True, callback=lambda c, p, v: _floats(v),
              help="Label fractions (columns).")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Labelled subsets / seeds per cell (mean +- std over them).")
@click.option("--methods", default=",".join(["scratch", "same-init", "dino", "pseudo-only", "ours", "pseudo-masks"]),
              show_default=True,
              help="Rows to run (comma-separated). Also: ours+fkd (needs --fkd-weights), ours+pic (ours' "
                   "pretraining fine-tuned with PIC CutMix), ours+ilka (the I-LKA + deformable decoder).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local backbone checkpoint every pretraining and the same-init row start from.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs.")
@click.option("--finetune-iters", type=click.IntRange(min=1), default=None, help="Override the preset's iterations.")
@click.option("--jobs", default=1, show_default=True, help="Workers for the pseudo-mask stage.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--shards", type=click.Path(exists=True, file_okay=False), default=None,
              help="Reuse these pseudo-mask shards (made without the test ids) instead of making them.")
@click.option("--pretrained", multiple=True, metavar="METHOD=DIR",
              help="Reuse a finished pretraining run for a row, e.g. ours=artifacts/pretrain. Repeatable.")
@click.option("--fkd-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For the ours+fkd row: local checkpoint of the frozen teacher (a DINOv2/DINOv3 ViT file, or an "
                   "export.pt of another run).")
@click.option("--fkd-teacher", default=None, help="timm name of that teacher (not needed for an export.pt).")
@click.option("--fkd-weight", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Weight of the FKD term in the ours+fkd row.")
@click.option("--no-progress", is_flag=True, help="No progress bars (for logs).")
def table(data, unlabelled, test_data, out, preset, fracs, seeds, methods, weights, pretrain_epochs, finetune_iters,
          jobs, device, shards, pretrained, fkd_weights, fkd_teacher, fkd_weight, no_progress):
    """Run the comparison grid (methods x label fractions x seeds) and write results.md/csv/png."""
    from trainer.table import TableSpec, run_table

    spec = TableSpec(data=tuple(map(str, data)), out=str(out), test_data=tuple(map(str, test_data)),
                     unlabelled=tuple(map(str, unlabelled)), fracs=fracs, seeds=tuple(range(seeds)),
                     methods=tuple(m.strip() for m in methods.split(",") if m.strip()), preset=preset,
                     weights=weights, pretrain_epochs=pretrain_epochs, finetune_iters=finetune_iters, jobs=jobs,
                     device=device, shards=shards, fkd_weights=fkd_weights, fkd_teacher=fkd_teacher,
                     fkd_weight=fkd_weight,
                     pretrained=tuple(tuple(p.split("=", 1)) for p in pretrained if "=" in p))
    bad = [p for p in pretrained if "=" not in p]
    if bad:
        raise click.BadParameter(f"expected METHOD=DIR, got {bad[0]!r}", param_hint="--pretrained")
    try:
        path = run_table(spec, progress=not no_progress)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(path.read_text())
    click.echo(f"results: {path}  {out / 'results.csv'}  {out / 'results.png'}")


if __name__ == "__main__":
    main()
