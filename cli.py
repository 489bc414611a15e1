"""edgedino: train a skin-lesion segmenter when almost nothing is labelled.

Stage 1 (``pseudomasks``) removes hair and makes edge-aware pseudo-masks with a Random Walker, into HDF5
shards; stage 2 (``pretrain``, ``finetune``) learns from them. Run ``edgedino COMMAND --help`` (the console command
the install makes) or, the same, ``python cli.py COMMAND --help``.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import click

# Each command imports its stage inside its body: `cli.py --help` and the stage-1 commands then start without
# loading torch (about 2 s), and a worker process imports only what its stage needs.

EXIT_REJECTS = 3  # pseudomasks finished, but some inputs were rejected (listed in rejects.jsonl)


def _parse_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT such as 512x384, got {value!r}") from None
    if w < 32 or h < 32:
        raise click.BadParameter(f"each side must be >= 32 px, got {value!r}")
    return w, h


class OneLineError(click.ClickException):
    """A known failure, shown as one line ``edgedino: error: <file>: <problem>`` (exit 1, 130 when interrupted)."""

    def show(self, file=None) -> None:
        click.echo(f"edgedino: error: {self.format_message()}", err=True)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def describe_error(exc: BaseException) -> str:
    """One line naming the file and the problem, for every failure a user can cause (no traceback)."""
    import errno
    import pickle

    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename if exc.filename is not None else ""
        if exc.errno == errno.ENOSPC:
            return f"{where or 'output'}: no space left on the device; free some space and rerun (finished work is kept)"
        reason = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                  errno.ENOTDIR: "a part of the path is not a folder", errno.ELOOP: "symbolic link loop",
                  errno.EISDIR: "is a folder, not a file"}.get(exc.errno, exc.strerror or str(exc))
        return f"{where}: {reason}" if where else reason
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        # torch's text suggests weights_only=False, i.e. running code from the file: never pass that on.
        return "not a loadable checkpoint: truncated, written by another program, or holding code that " \
               "edgedino refuses to run"
    problems = getattr(exc, "problems", None)  # a dataset check (DatasetError)
    if problems and len(problems) == 1:
        return str(problems[0])
    text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    if problems or (isinstance(exc, click.ClickException) and "Original Traceback" not in text):
        return text.strip()  # a command's own message; a dataset's problems one per line below the count
    if text.startswith("Caught ") and "Original Traceback" in text:  # re-raised from a DataLoader worker
        original = text.strip().splitlines()[-1]
        return original.split(": ", 1)[1] if ": " in original else original
    return _first_line(text) or type(exc).__name__


class EdgedinoGroup(click.Group):
    """The one top-level error handler: known failures become one line and exit 1; ``-v`` adds the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.UsageError, click.Abort, OneLineError):
            raise
        except KeyboardInterrupt:
            error = OneLineError("interrupted; finished work is kept, rerun to resume")
            error.exit_code = 130
            raise error from None
        except Exception as exc:  # a ClickException too
            verbose = bool(ctx.params.get("verbose"))
            if verbose:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            code = exc.exit_code if isinstance(exc, click.ClickException) else 1
            known = isinstance(exc, (click.ClickException, OSError, ValueError, RuntimeError))
            error = OneLineError(describe_error(exc) + ("" if verbose or known else "  (-v shows the traceback)"))
            error.exit_code = code
            raise error from None


@click.group(cls=EdgedinoGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120,
                                                  "terminal_width": 120})
@click.option("-v", "--verbose", is_flag=True,
              help="Log debug messages (per-shard and per-sample detail) and show the traceback of an error.")
def main(verbose: bool) -> None:
    """edgedino: self-distillation with edge-aware pseudo-masks for skin-lesion segmentation.

    \b
    Typical run:
      python cli.py synth --out artifacts/synth --n 64          # or use your own data
      python cli.py pseudomasks --data DATA --out artifacts/shards
      python cli.py inspect artifacts/shards --png sheet.png
      python cli.py pretrain --shards artifacts/shards --out artifacts/pretrain
      python cli.py refine --shards artifacts/shards --pretrain artifacts/pretrain --out artifacts/refine
      python cli.py finetune --data DATA --frac 0.01 --checkpoint artifacts/refine/round-2/pretrain/export.pt \\
          --pseudo-shards artifacts/refine/round-2/shards --fuse --out ...

    The method, mapped to the code: docs/METHOD.md; measured results: docs/RESULTS.md.
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
@click.option("--overwrite", is_flag=True,
              help="Replace files in --out that synth did not write (e.g. a synthetic set made by an older version). "
                   "Never point it at real data.")
@click.option("--fov", type=click.Choice(["auto", "circle", "vignette"]), default="auto", show_default=True,
              help="'circle': every image gets a circular field of view (random radius and offset, black or "
                   "dark-grey corners, darker towards the rim), as on some clinics' dermoscopes. 'vignette': a wide, "
                   "soft, brown-tinted lens vignette around light skin with a small (4-15 %) brown lesion, the case "
                   "where stage 1 takes the whole bright disc for lesion. 'auto' keeps the usual mix (and "
                   "byte-identical images).")
@click.option("--lesion", type=click.Choice(["auto", "large"]), default="auto", show_default=True,
              help="'large': lesions that fill 60-100 % of the frame or cross its edge, with a broad pale "
                   "periphery. 'auto' keeps the usual 3-60 % lesions.")
def synth(out: Path, n: int, seed: int, size: str, jobs: int, overwrite: bool, fov: str, lesion: str) -> None:
    """Generate synthetic dermoscopy images with known lesion and hair masks."""
    from common.guard import Ledger, cap_jobs, check_out_dir, output_folder
    from pipeline.synth import write_synthetic_dataset

    names = [name for i in range(n) for name in (f"images/SYN_{i:07d}.jpg", f"masks/SYN_{i:07d}_segmentation.png",
                                                 f"hair/SYN_{i:07d}_hair.png", f"clean/SYN_{i:07d}.png")]
    if check_out_dir(out, []).is_dir():  # read-only: a refused folder is left exactly as it was
        present = [f"{sub}/{p.name}" for sub in ("images", "masks") if (out / sub).is_dir()
                   for p in (out / sub).iterdir()]
        if Ledger(out).foreign(present) and not overwrite:  # never mix synthetic images into a real data set
            raise click.ClickException(f"{out}: holds images or masks synth did not write; choose an empty folder")
    with output_folder(out, command="synth", names=names, overwrite=overwrite, overwrite_flag="--overwrite"):
        ids = write_synthetic_dataset(out, n, seed=seed, size=_parse_size(size), jobs=cap_jobs(jobs, n), fov=fov,
                                      lesion=lesion)
    click.echo(f"wrote {len(ids)} synthetic images to {out}")


@main.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Data folder: ISIC 2018 layout, images/ (+ masks/), or a flat folder of images. "
                   "Repeat to combine folders (e.g. a labelled set plus unlabelled images).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for shards, manifest.json and rejects.jsonl. Rerunning resumes.")
@click.option("--jobs", default=1, show_default=True,
              help="Processes working on images (-1: all cores): this one and N-1 workers. Output is identical "
                   "whatever the number.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32, max=4096),
              help="Storage/training resolution S: images are squashed to SxS. Raise to 384-512 for a "
                   "GPU pretraining at higher resolution.")
@click.option("--shard-size", default=128, show_default=True, type=click.IntRange(min=1, max=100_000),
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
              help="walker: seeds + edge-aware Random Walker (about 0.1 s/image; the better masks on ISIC, "
                   "docs/RESULTS.md). "
                   "s3net: per-image unsupervised clustering after S^3-Net, lesion clusters chosen from the "
                   "coarse lesion map (label-free, several times slower). A different method needs a new --out.")
@click.option("--cut", "cut_rule", type=click.Choice(["learned", "fixed"]), default="learned", show_default=True,
              help="Where the walker's probability is cut. learned: per image, among the thresholds 0.1-0.7, by "
                   "a small model of ten label-free measures of each candidate mask (fitted on labelled ISIC "
                   "2017; docs/METHOD.md, section 3.4). fixed: 0.3 for every image (about 9 ms less per image). "
                   "A different rule needs a new --out or --overwrite.")
@click.option("--seed", default=0, show_default=True,
              help="Seeds --method s3net per image from (seed, image id); the walker does not use it.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def pseudomasks(data, out, jobs, size, shard_size, backend, scheduler, exclude_from, overwrite, method, cut_rule,
                seed, no_progress):
    """Remove hair and make edge-aware pseudo-masks into HDF5 shards (stage 1)."""
    from common import datasets
    from pipeline.pseudomask.per_image import PseudoMaskConfig
    from pipeline.run import RunConfig, run_pseudomasks

    if scheduler and backend != "dask":
        raise click.BadParameter("--scheduler needs --backend dask", param_hint="--scheduler")
    from common.guard import check_out_dir

    check_out_dir(out, exclude_from)  # the test set is read too: never written into
    exclude = set()
    for folder in exclude_from:
        exclude |= set(datasets.open_dataset(folder).ids)
    try:
        pseudo = PseudoMaskConfig(method=method, cut_rule=cut_rule)
        config = RunConfig(size=size, shard_size=shard_size, seed=seed, pseudo=pseudo)
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
              help="Folder for <ID>_segmentation.png masks at each image's original size (0/255). Must not be the "
                   "shards folder; masks already there that an earlier export did not write are never replaced "
                   "unless --overwrite.")
@click.option("--overwrite", is_flag=True,
              help="Replace <ID>_segmentation.png files in --out that an earlier export did not write. Never point "
                   "it at your expert masks.")
def export(shards: Path, out: Path, overwrite: bool) -> None:
    """Write pseudo-masks at original size as ISIC-style PNGs (to score or view)."""
    from pipeline.export import export_masks

    n = export_masks(shards, out, overwrite=overwrite)
    click.echo(f"wrote {n} mask(s) to {out}")


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a contact sheet: original, hair mask, cleaned, probability, contours.")
@click.option("--rows", default=8, show_default=True, help="Samples in the contact sheet.")
@click.option("--min-confidence", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="List the samples whose pseudo-mask confidence is below this: the least confident masks are "
                   "the weakest (docs/EXPERIMENTS.md); raise it to see more.")
def inspect(path: Path, png: Path | None, rows: int, min_confidence: float) -> None:
    """Summarise a shard or a folder of shards (counts, config, distributions, rejects, low-confidence
    pseudo-masks), or a pretraining run folder (its collapse monitor and linear probe)."""
    from common.guard import check_out_dir, claim_file
    from pipeline.report import contact_sheet, summarise
    from pipeline.shards import ShardError

    if path.is_dir() and (path / "log.jsonl").exists():
        from trainer.train.pretrain import run_summary  # a pretraining run folder: the trainer's stage

        click.echo(run_summary(path))
        return
    if png:
        check_out_dir(png.parent, [path], option="--png folder", flat_inputs=True)
        claim_file(png, option="--png")
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
              help="Run folder: checkpoint-latest.pt (and the one before, checkpoint-previous.pt), export.pt, "
                   "log.jsonl, pictures/. Rerunning resumes on the same data.")
@click.option("--preset", type=click.Choice(["auto", "cpu", "paper"]), default="auto", show_default=True,
              help="paper: ViT-S/16, 224/96 px crops, DINO's sizes (a GPU). cpu: ViT-Ti with patch 8 at 96/48 px "
                   "(12 x 12 tokens) with small heads, about 35 minutes on 2 cores for 2,000 images. auto: paper when CUDA is present, else cpu. "
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
@click.option("--decoder-skip/--no-decoder-skip", default=None,
              help="The decoder's high-resolution edge path (preset: on): a few strided convs on the input crop "
                   "fused with the token features, so borders come from pixels, not from the token grid. Turn it "
                   "off only to reproduce token-only runs.")
@click.option("--patch-size", type=click.IntRange(min=2),
              help="Patch size in place of the arch's own (cpu preset: 8 on ViT-Ti, a 12 x 12 token grid at "
                   "96 px). Smaller patches draw finer borders and cost about (old/new)^2 more per step.")
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
@click.option("--new-data", is_flag=True,
              help="Resume a run on data other than it was trained on (other shards, more or fewer samples): "
                   "training goes on from the next epoch over the new data. Without it such a resume is refused.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("--teacher-temp", type=click.FloatRange(min=0, min_open=True),
              help="Teacher temperature after its warm-up (DINO: 0.07; cpu preset 0.02, constant: DINO's 0.04 -> "
                   "0.07 sat at uniform collapse there, docs/DINO_COLLAPSE.md). Lower it when the collapse monitor "
                   "reports uniform collapse (teacher entropy near ln K); raise it on one-hot collapse.")
@click.option("--warmup-teacher-temp", type=click.FloatRange(min=0, min_open=True),
              help="Teacher temperature at the start, warming linearly to --teacher-temp (DINO: 0.04; cpu preset "
                   "0.02).")
@click.option("--warmup-teacher-temp-epochs", type=click.IntRange(min=0),
              help="Epochs of that warm-up (DINO: 30; the cpu preset 2).")
@click.option("--student-temp", type=click.FloatRange(min=0, min_open=True),
              help="Student temperature (DINO: 0.1). Keep it above the teacher's: equal temperatures remove the "
                   "sharpening and the run collapses to uniform.")
@click.option("--center-momentum", type=click.FloatRange(0, 1),
              help="EMA momentum of DINO's centre (0.9). 1 keeps the centre at 0 (no centring: one-hot collapse); "
                   "rarely worth changing.")
@click.option("--centering", type=click.Choice(["centre", "sinkhorn"]),
              help="Teacher target balancing: centre (DINO's EMA centre) or sinkhorn (DINOv2's Sinkhorn-Knopp, "
                   "3 iterations: every batch spreads over the prototypes). Try sinkhorn when the collapse monitor "
                   "reports uniform or one-hot collapse.")
@click.option("--koleo-weight", type=click.FloatRange(min=0),
              help="KoLeo spreading term on the student's global-view head outputs (DINOv2: 0.1; 0 = off). Pushes "
                   "each image's embedding away from its nearest neighbour in the batch; try it when all images "
                   "map to one point (uniform collapse).")
@click.option("--masked-patch-weight", type=click.FloatRange(min=0),
              help="iBOT-style masked-patch loss beside DINO's (0 = off; iBOT: 1): half the student's global views "
                   "have 10-50 percent of their patches hidden behind a learned token and must predict the teacher's "
                   "patch outputs there. A patch-level objective, for dense tasks. Adds a mask token: a run "
                   "resumes only with the same on/off.")
@click.option("--momentum-teacher", type=click.FloatRange(0, 1),
              help="Teacher EMA momentum at the start, rising to 1 (DINO: 0.996; cpu preset 0.99). Lower for "
                   "short runs on small data.")
@click.option("--bottleneck-dim", type=click.IntRange(min=1), help="DINO head bottleneck width (DINO: 256).")
@click.option("--collapse-patience", type=click.IntRange(min=1),
              help="Steps the teacher may sit at uniform or one-hot collapse before the warning (default 50). "
                   "Lower it for short runs, raise it if a warm-up phase triggers it.")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Leave out pseudo-masks whose confidence (stored by 'pseudomasks', listed by 'inspect') is below "
                   "this (default 0: keep all; leaving masks out did not help on ISIC, docs/EXPERIMENTS.md). "
                   "Try 0.2 when many masks are poor. Shards without a confidence keep every sample.")
@click.option("--probe-samples", type=click.IntRange(min=0),
              help="Images of the last shard held out for the end-of-run linear probe of the patch features "
                   "(default 64; held out only when the data has 4x as many; 0 = no probe). More: a steadier "
                   "number, a few more seconds.")
@click.option("--norm-last-layer/--free-last-layer", default=None,
              help="DINO head's last layer: weight norm fixed at 1 (DINO's default) or learned (--free-last-layer: "
                   "the logits may grow, which sharpens teacher and student; DINO reports it better but less stable "
                   "for ViT-S).")
@click.option("--decoder-lr-scale", type=click.FloatRange(min=0, min_open=True),
              help="The auxiliary decoder learns at the DINO learning rate times this (cpu preset 10: the decoder "
                   "starts from scratch and the DINO rate, scaled for a batch of 16, is too slow for it to learn the "
                   "pseudo-masks in a short run; paper preset 1).")
def pretrain(shards, out, preset, exclude_from, no_progress, device, no_distill, new_data, **options):
    """DINO self-distillation + auxiliary pseudo-mask segmentation (stage 2)."""
    import dataclasses

    from common import datasets
    from trainer.train.objective import NonFiniteLoss
    from trainer.train.presets import pretrain_preset
    from trainer.train.pretrain import pretrain as run_pretrain

    overrides = {k: v for k, v in options.items() if v is not None}
    if no_distill:
        overrides["distill"] = False
    try:
        config = dataclasses.replace(pretrain_preset(preset), **overrides)
        exclude = {i for folder in exclude_from for i in datasets.open_dataset(folder).ids}
        result = run_pretrain(list(shards), out, config, device=device, exclude_ids=exclude,
                              progress=not no_progress, new_data=new_data)
    except (ValueError, NonFiniteLoss, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if result.resumed_from is not None:
        click.echo(f"resumed from step {result.resumed_from}")
    click.echo(f"done: {result.step} steps; teacher export {out / 'export.pt'}; log {out / 'log.jsonl'}")
    click.echo(_pretrain_health(result))


def _pretrain_health(result) -> str:
    """The final line of 'pretrain': the linear probe (start -> end, and whether the features improved) and the
    collapse status (trainer.train.pretrain.health_line)."""
    from trainer.train.pretrain import health_line

    return health_line(result)


_CHOICE_OPTIONS = [
    click.option("--agree-at", type=click.FloatRange(0, 1), default=0.5, show_default=True,
                 help="Where the student's and the walker's masks agree at least this much (Jaccard), their "
                      "probabilities are combined; below it the more lesion-like mask is kept. Raise it to let the "
                      "choice decide more images."),
    click.option("--leave-out", type=click.FloatRange(0, 1, max_open=True), default=0.15, show_default=True,
                 help="Share of the pool, least confident first, that the next student does not train on "
                      "(training weight 0)."),
]


def _choice_options(command):
    for option in reversed(_CHOICE_OPTIONS):
        command = option(command)
    return command


def _relabel_config(agree_at: float, leave_out: float):
    from trainer.inference.choice import ChoiceConfig
    from trainer.inference.relabel import RelabelConfig

    return RelabelConfig(choice=ChoiceConfig(agree_at=agree_at), leave_out=leave_out)


@main.command()
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Stage 1's shards (a pseudomasks output folder).")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The student: a pretraining export.pt (or a refine round's) or a finetune model.pt.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the relabelled shards (not the source folder); rerunning resumes, and a folder made "
                   "by another model is redone, never mixed.")
@_choice_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def relabel(shards, model_path, out, agree_at, leave_out, device, no_progress):
    """Relabel a pool with a student: per image the student's mask, the walker's, or their combination, with the
    student-walker agreement as the confidence (one self-training round's first step)."""
    from trainer.inference.relabel import relabel as run_relabel

    try:
        summary = run_relabel(shards, model_path, out, config=_relabel_config(agree_at, leave_out), device=device,
                              progress=not no_progress)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.line())


@main.command()
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The pool: a refine round's shards (round-N/shards, or relabel's output), or stage 1's shards "
                   "with --model.")
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The student whose features spread the choice (default: the one that relabelled --shards); "
                   "needed to relabel stage 1's own shards first.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1),
              help="How many images to label (e.g. 16: 1 % of ISIC 2018).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for advise.csv, advise.png and annotate/ (the images and their label-free masks to "
                   "correct).")
@click.option("--exclude-from", "exclude_from", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Never choose ids of this data folder (your test set). Repeatable.")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The data 'finetune --labels-from' will read: its validation and test ids (the layout's own "
                   "folders, else the id hash) are never chosen, so every advised image can train. Repeatable.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def advise(shards, model_path, n, out, exclude_from, data, device, no_progress):
    """Which images to label first: the least confident label-free masks, spread over the pool (then label them
    and run 'finetune --labels-from OUT/advise.csv')."""
    from common import datasets
    from trainer.data.splits import held_out_ids
    from trainer.inference.advise import advise as run_advise

    try:
        exclude = {i for folder in exclude_from for i in datasets.open_dataset(folder).ids}
        if data:
            exclude |= held_out_ids(datasets.open_dataset(list(data)))
        result = run_advise(shards, out, n=n, model=model_path, exclude_ids=exclude, device=device,
                            progress=not no_progress)
    except (ValueError, FileNotFoundError, datasets.DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    for r in result.chosen[:10]:
        click.echo(f"{r['rank']:>3}. {r['id']}  confidence {r['confidence']:.2f}  {r['why']}")
    if len(result.chosen) > 10:
        click.echo(f"... and {len(result.chosen) - 10} more")
    click.echo(f"chose {len(result.chosen)} image(s): {out / 'advise.csv'}, {out / 'advise.png'}; label the masks in "
               f"{out / 'annotate'} and fine-tune with --labels-from {out / 'advise.csv'}")


@main.command()
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Stage 1's shards: what the first pretraining was trained on.")
@click.option("--pretrain", "first_run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The finished pretraining run folder (round 1): its export.pt relabels round 2, its checkpoint "
                   "starts round 2's training, its config is every round's.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for round-2/, round-3/, ... (each: shards/ and pretrain/). Rerunning resumes.")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds after the first pretraining. With the cpu preset, rounds after round 3 gained nothing "
                   "(docs/RESULTS.md, 'Self-training').")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True,
              help="Epochs of each round's training (it starts from the previous round's weights).")
@_choice_options
@click.option("--exclude-from", "exclude_from", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Leave out samples whose ids are in this data folder (your test set), as in pretrain. Repeatable.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def refine(shards, first_run, out, rounds, epochs, agree_at, leave_out, exclude_from, device, no_progress):
    """Self-training rounds: each round relabels the pool with the last student (the per-image choice between
    it and the walker) and trains the next student on the new labels, low-confidence images left out."""
    from common import datasets
    from trainer.train.objective import NonFiniteLoss
    from trainer.train.refine import RefineConfig
    from trainer.train.refine import refine as run_refine

    try:
        exclude = {i for folder in exclude_from for i in datasets.open_dataset(folder).ids}
        config = RefineConfig(rounds=rounds, epochs=epochs, relabel=_relabel_config(agree_at, leave_out))
        results = run_refine(shards, first_run, out, config=config, device=device, exclude_ids=exclude,
                             progress=not no_progress)
    except (ValueError, FileNotFoundError, NonFiniteLoss) as exc:
        raise click.ClickException(str(exc)) from None
    for r in results:
        click.echo(f"round {r.round}: {r.relabel_line}")
        click.echo(r.summary)
    last = results[-1]
    click.echo(f"done: {len(results)} round(s); the last student is {last.run / 'export.pt'} (its pool: {last.shards})")


@main.command()
@click.option("--data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Labelled data: ISIC 2018 layout (its own splits) or images/ + masks/ (hash split 70/15/15).")
@click.option("--frac", type=float, default=None,
              help="Fraction of the labelled training images to use, drawn at random with --seed: 0.002 / 0.005 / "
                   "0.01 of ISIC 2018's 2,594 are 5 / 13 / 26 images. At least one image is used. Give it or "
                   "--labels-from.")
@click.option("--labels-from", "labels_from", type=click.Path(path_type=Path), default=None,
              help="Fine-tune on exactly these images instead of a random --frac: a CSV with an id column (the "
                   "advise.csv of 'advise') or one id per line; their masks must be in --data. Ids of the "
                   "validation or test split, or not in --data, are refused.")
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
@click.option("--pseudo-shards", type=click.Path(exists=True, path_type=Path), default=None,
              help="Semi-supervised fine-tuning: the pseudomasks shards of your unlabelled pool. Each step then also "
                   "trains on --pseudo-batch pool images against their pseudo-masks (uncertain band ignored). Use "
                   "it when labels are few and the pool is large; validation and test ids are left out.")
@click.option("--pseudo-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of the pseudo-mask loss relative to the expert loss (default 0.5, ramped in over the "
                   "first 20 % of the iterations). Lower it when the pseudo-masks are poor on your data.")
@click.option("--pseudo-batch", type=click.IntRange(min=1), default=None,
              help="Pool images per step beside the labelled batch (default 8).")
@click.option("--pseudo-min-confidence", type=click.FloatRange(0, 1), default=None,
              help="Leave out the pool's pseudo-masks whose confidence (stored by 'pseudomasks', listed by 'inspect') "
                   "is below this (default 0: keep all).")
@click.option("--tta", is_flag=True,
              help="Average the test predictions over the 8 flips/quarter turns (8x the prediction time); "
                   "'predict' with the saved model.pt does the same.")
@click.option("--all-components", is_flag=True,
              help="Keep every predicted component in the test masks (default: frame-like components dropped, "
                   "holes filled and one component kept, the one with the most centre-weighted area: one lesion per "
                   "image, which removes vignette corners and blobs; docs/METHOD.md, section 7.3).")
@click.option("--predict-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Segment the test images at this multiple of the training input size (default 2: more tokens "
                   "for the border, better on held-out ISIC 2017 images, docs/EXPERIMENTS.md; 'predict' with the "
                   "saved model.pt does the same). 1 is the fastest.")
@click.option("--fuse", is_flag=True,
              help="Test masks (and 'predict' with the saved model.pt) from the model's lesion probability together "
                   "with stage 1's label-free walker probability of the same image (about 0.1 s more per image), as "
                   "--fusion says.")
@click.option("--fusion", type=click.Choice(["choice", "fixed"]), default=None,
              help="With --fuse: choice (default) decides per image, over the test images as a pool: where the model's "
                   "and the walker's masks agree their probabilities are combined, where they disagree the more "
                   "lesion-like mask is kept (docs/METHOD.md, section 6.5); fixed combines every image with "
                   "--fuse-weight.")
@click.option("--fuse-weight", type=click.FloatRange(0, 1), default=None,
              help="With --fuse: the model's share of a combined probability (default 0.15; 1 is the model alone).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def finetune(data, frac, labels_from, checkpoint, out, test_data, seed, init, decoder, decoder_arch, arch, img_size, iters,
             preset, device, pic, pic_prob, pic_anneal, pseudo_shards, pseudo_weight, pseudo_batch, pseudo_min_confidence,
             tta, all_components, predict_scale, fuse, fusion, fuse_weight, no_progress):
    """Fine-tune with a fraction of the expert labels and report ISIC metrics."""
    import dataclasses

    from common import datasets
    from trainer.train.finetune import finetune as run_finetune
    from trainer.train.presets import finetune_preset

    if init == "pretrain" and checkpoint is None:
        raise click.BadParameter("--init pretrain needs --checkpoint PATH (the export.pt of 'pretrain')",
                                 param_hint="--checkpoint")
    if (frac is None) == (labels_from is None):
        raise click.UsageError("give --frac (a random share of the labels) or --labels-from (a list of ids), not "
                               + ("both" if frac is not None else "neither"))
    overrides = {"seed": seed, "init": init, "decoder": decoder, "arch": arch, "img_size": img_size, "iters": iters,
                 "decoder_arch": decoder_arch, "pseudo_shards": str(pseudo_shards) if pseudo_shards else None,
                 "pseudo_weight": pseudo_weight, "pseudo_batch": pseudo_batch,
                 "pseudo_min_confidence": pseudo_min_confidence, "tta": tta or None, "fuse": fuse or None,
                 "fuse_weight": fuse_weight, "fusion": fusion,
                 "one_lesion": False if all_components else None, "predict_scale": predict_scale}
    if pic:
        from trainer.data.cutmix import PICConfig

        overrides["pic"] = PICConfig(prob=pic_prob, anneal=pic_anneal)
    config = dataclasses.replace(finetune_preset(preset), **{k: v for k, v in overrides.items() if v is not None})
    try:
        result = run_finetune(list(data), frac if frac is not None else 1.0, out, checkpoint=checkpoint,
                              test_data=list(test_data) or None, config=config, device=device,
                              progress=not no_progress, labels_from=labels_from)
    except (ValueError, FileNotFoundError, datasets.DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    selected = (f"best validation Jaccard {result.best_val_jaccard:.4f} at iteration {result.best_iter}"
                if math.isfinite(result.best_val_jaccard) else f"no validation image: iteration {result.best_iter} "
                                                                "(the last) kept")
    click.echo(f"labelled images: {len(result.subset_ids)} (ids in {out / 'subset.json'}); {selected}")
    for name, value in result.means.items():
        click.echo(f"{name:>20}: {value:.4f}")
    if result.means:
        click.echo(f"predictions: {out / 'predictions'}   metrics: {out / 'metrics.json'}   "
                   f"pictures: {out / 'best_worst.png'}")
    else:
        click.echo(f"no test image has a mask: nothing scored; the model is {out / 'model.pt'} (segment your "
                   f"images with 'predict --model {out / 'model.pt'}')")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The model.pt written by 'finetune' (or a pretraining export.pt: its auxiliary decoder, no "
                   "label used). Everything needed to rebuild the segmenter is in the file.")
@click.option("--data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Images to segment, in any layout the data commands read (a flat folder, images/, ISIC 2018); "
                   "masks are not needed. Repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <ID>_segmentation.png (0/255) at each image's original size; not a data folder.")
@click.option("--probabilities", is_flag=True,
              help="Also write <ID>_probability.png: the lesion probability x 255 (8 bits), for your own threshold "
                   "or for review of uncertain borders.")
@click.option("--overlay", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw a contact sheet (PNG) of the first 24 images with the predicted border.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when present, else CPU.")
@click.option("--one-lesion/--all-components", default=None,
              help="Masks: fill holes and keep the component with the most centre-weighted area (one lesion per "
                   "image), or keep every component. Default: as 'finetune' made the model's test masks (one lesion since it exists).")
@click.option("--predict-scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Segment at this multiple of the model's training input size. Default: as 'finetune' made the "
                   "model's test masks (2; 1 for a model.pt older than the option; 2 for a pretraining export.pt).")
@click.option("--fuse/--no-fuse", default=None,
              help="Combine the model's lesion probability with stage 1's label-free walker probability of each image "
                   "(hair removal + Random Walker, about 0.1 s more per image) before cutting the mask, as --fusion "
                   "says. Default: as 'finetune' made the model's test masks (its --fuse); off for a pretraining "
                   "export.pt.")
@click.option("--fusion", type=click.Choice(["choice", "fixed"]), default=None,
              help="choice: per image, over the images of --data as a pool, the model's mask, the walker's or their "
                   "combination (with --probabilities, confidence.csv lists each image's choice and confidence, "
                   "least confident first); fixed: the model's --fuse-weight for every image. Default: the model's "
                   "(fixed for a model.pt older than the choice, choice for an export.pt).")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def predict(model_path, data, out, probabilities, overlay, device, one_lesion, predict_scale, fuse, fusion,
            no_progress):
    """Segment a folder of new images with a saved model (exit 3 when some images were skipped)."""
    from common import datasets
    from trainer.inference.predict import predict_folder

    try:
        result = predict_folder(model_path, list(data), out, probabilities=probabilities, overlay=overlay,
                                device=device, progress=not no_progress, one_lesion=one_lesion,
                                predict_scale=predict_scale, fuse=fuse, fusion=fusion)
    except (ValueError, FileNotFoundError, datasets.DatasetError) as exc:
        raise click.ClickException(str(exc)) from None
    for path, reason in result.failed:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(f"segmented {len(result.written)} image(s) into {out}"
               + (f"; overlay {result.overlay}" if result.overlay else "")
               + (f"; skipped {len(result.failed)} unreadable image(s)" if result.failed else ""))
    if result.failed:
        sys.exit(EXIT_REJECTS)


@main.command()
@click.option("--pred", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of predicted <ID>_segmentation.png masks.")
@click.option("--truth", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of expert masks (<ID>_segmentation.png), or a data folder with masks/.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write per-image and mean metrics to this JSON file.")
def evaluate(pred: Path, truth: Path, json_out: Path | None) -> None:
    """Score predicted masks against expert masks like ISIC (Jaccard, Dice, thresholded Jaccard...)."""
    from common.guard import check_out_dir, claim_file
    from trainer.eval.metrics import evaluate_folders, write_metrics_json

    if json_out:
        check_out_dir(json_out.parent, [pred, truth], option="--json folder", flat_inputs=True)
        claim_file(json_out, option="--json")
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
    """Label fractions: comma-separated numbers, each in (0, 1]."""
    try:
        fracs = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.002,0.01, got {value!r}") from None
    bad = [f for f in fracs if not 0 < f <= 1]  # nan fails this too
    if bad:
        raise click.BadParameter(f"each fraction must be in (0, 1], got {bad[0]} in {value!r}")
    return fracs


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
              help="cpu: ViT-Ti with patch 8 at 96 px (12 x 12 tokens), minutes per cell on 2 cores. paper: "
                   "ViT-S/16 at 224 px (a GPU). auto: paper when CUDA is present, else cpu.")
@click.option("--fracs", default="0.002,0.005,0.01,0.05", show_default=True, callback=lambda c, p, v: _floats(v),
              help="Label fractions (columns).")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(min=1),
              help="Labelled subsets / seeds per cell (mean +- std over them).")
@click.option("--methods", default=",".join(["scratch", "same-init", "unet-pseudo", "dino", "pseudo-only", "ours",
                                             "pseudo-masks"]),
              show_default=True,
              help="Rows to run (comma-separated). unet-pseudo: a small U-Net trained on the pseudo-masks alone, "
                   "then fine-tuned (the baseline ours must beat). Also: ours+fkd (needs --fkd-weights), ours+semi "
                   "(ours' pretraining fine-tuned semi-supervised with the table's pseudo-masks), ours+pic (ours' "
                   "pretraining fine-tuned with PIC CutMix), ours+ilka (the I-LKA + deformable decoder), ours+fuse, "
                   "ours+semi+fuse and unet-pseudo+fuse (those rows' models, their test masks decided per image "
                   "with the walker's: finetune --fuse; no training of their own), ours+fixed and ours+semi+fixed "
                   "(the same with the fixed weight), ours-r2 (one self-training round after ours: refine), "
                   "ours-r2+semi, ours-r2+fuse, ours-r2+semi+fuse, ours-r2+semi+advised(+fuse) (the labels of the "
                   "images 'advise' ranks first, not a random draw of as many), and pseudo-masks-r2 (the test "
                   "images' round-2 pseudo-masks: relabelled by ours' student).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Local backbone checkpoint every pretraining and the same-init row start from.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs.")
@click.option("--finetune-iters", type=click.IntRange(min=1), default=None, help="Override the preset's iterations.")
@click.option("--jobs", default=1, show_default=True, help="Workers for the pseudo-mask stage.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--shards", type=click.Path(exists=True, file_okay=False), default=None,
              help="Reuse these pseudo-mask shards (made without the test ids) instead of making them.")
@click.option("--pretrained", multiple=True, metavar="METHOD=DIR",
              help="Reuse a finished pretraining run for a row, e.g. ours=artifacts/pretrain or "
                   "ours-r2=artifacts/refine/round-2/pretrain. Repeatable.")
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
