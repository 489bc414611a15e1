"""Benchmark: batched multi-crop (trainer.data.multicrop) vs the official DINO torchvision/PIL recipe, per CPU core.

Both run side by side in one process on the same 256 x 256 uint8 inputs, pinned to one thread
(``torch.set_num_threads(1)``; PIL is single-threaded), with the same crop counts and sizes (2 x 224 + 8 x 96).
The reference re-implements the recipe of DINO (Caron et al. 2021, ``DataAugmentationDINO`` in
facebookresearch/dino): RandomResizedCrop (bicubic) + horizontal flip + ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8 +
RandomGrayscale 0.2 + PIL Gaussian blur (radius 0.1-2; p = 1.0 / 0.1 / 0.5) + solarisation (p = 0.2 on the second
global view) + ToTensor + Normalize. Ours runs with ``MultiCropConfig.dino()`` so the work matches (our extra
vertical flips and rotations cost nothing: they are part of the sampling grid).

Usage::

    python bench/bench_multicrop.py            # full run
    python bench/bench_multicrop.py --quick    # a few seconds

Prints samples/s per core for both, their ratio, and a per-stage breakdown of ours.

Second comparison, end to end (``--real DIR``, default ``../shared/data/isic_sample``): what one sample costs each
design's whole input pipeline on real ISIC JPEGs. The reference is DINO's data path (``ImageFolder``: PIL decode
of the original JPEG, ``convert('RGB')``, the recipe above); ours reads the sample from an HDF5 shard (the
pseudo-mask stage already decoded and resized it once) and runs ``multi_crop`` in batches. This is the
per-epoch cost a training run pays, which is what the stage-1/stage-2 split buys.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from trainer.data.multicrop import MultiCropConfig, multi_crop

from timing import best_of

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _PILBlur:
    """DINO's GaussianBlur: PIL filter, radius uniform in [0.1, 2], applied with probability p."""

    def __init__(self, p: float, rng: random.Random) -> None:
        self.p, self.rng = p, rng

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.rng.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=self.rng.uniform(0.1, 2.0)))


class _PILSolarize:
    """DINO's Solarization: PIL ImageOps.solarize (threshold 128) with probability p."""

    def __init__(self, p: float, rng: random.Random) -> None:
        self.p, self.rng = p, rng

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if self.rng.random() < self.p else img


def reference_dino_transform(seed: int = 0):
    """The official DINO multi-crop (2 x 224 global, 8 x 96 local) on one PIL image -> list of 10 tensors."""
    rng = random.Random(seed)
    flip_jitter = T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])
    normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    bicubic = T.InterpolationMode.BICUBIC
    global1 = T.Compose([T.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic), flip_jitter,
                         _PILBlur(1.0, rng), normalize])
    global2 = T.Compose([T.RandomResizedCrop(224, scale=(0.4, 1.0), interpolation=bicubic), flip_jitter,
                         _PILBlur(0.1, rng), _PILSolarize(0.2, rng), normalize])
    local = T.Compose([T.RandomResizedCrop(96, scale=(0.05, 0.4), interpolation=bicubic), flip_jitter,
                       _PILBlur(0.5, rng), normalize])

    def apply(img: Image.Image) -> list[torch.Tensor]:
        return [global1(img), global2(img)] + [local(img) for _ in range(8)]

    return apply


def _inputs(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour images with a dark blob, (n, 3, size, size) uint8 (content barely matters)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (img.clamp(0, 1) * 255).to(torch.uint8)


def time_reference(images: torch.Tensor, repeats: int) -> float:
    """Seconds per sample of the reference, uint8 tensor -> PIL -> 10 normalised tensors."""
    torch.manual_seed(0)
    transform = reference_dino_transform()
    arrays = [img.permute(1, 2, 0).contiguous().numpy() for img in images]
    transform(Image.fromarray(arrays[0]))  # warm-up

    def run():
        for arr in arrays:
            transform(Image.fromarray(arr))

    return best_of(run, repeats, warmup=False) / len(arrays)


def time_ours(images: torch.Tensor, repeats: int, config: MultiCropConfig) -> float:
    """Seconds per sample of ``multi_crop`` on the whole batch at once."""
    gen = torch.Generator().manual_seed(0)
    return best_of(lambda: multi_crop(images, config=config, generator=gen), repeats) / images.shape[0]


def profile_ours(images: torch.Tensor, config: MultiCropConfig) -> None:
    """Per-operator self time of one call (torch.profiler), top 8."""
    from torch.profiler import profile

    gen = torch.Generator().manual_seed(0)
    with profile() as prof:
        multi_crop(images, config=config, generator=gen)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def time_reference_files(paths: list[Path], repeats: int) -> float:
    """Seconds per sample of DINO's data path: PIL decode of the JPEG + RGB + the recipe."""
    transform = reference_dino_transform()

    def run():
        for p in paths:
            with Image.open(p) as im:
                transform(im.convert("RGB"))

    return best_of(run, repeats, warmup=False) / len(paths)


def _shard_from(paths: list[Path], out: Path, size: int = 256) -> Path:
    """A shard of the real images squashed to size x size (masks empty: only the I/O cost matters here)."""
    import cv2

    from common.datasets import read_image
    from pipeline.shards import ShardRecord, write_shard

    empty = np.zeros((size, size), bool)
    records = []
    for p in paths:
        image = cv2.resize(read_image(p, min_long_side=2 * size), (size, size), interpolation=cv2.INTER_AREA)
        records.append(ShardRecord(id=p.stem, path=str(p), orig_shape=(size, size), image=image, hair_mask=empty,
                                   prob=empty.astype(np.float32), pseudo_mask=empty, no_lesion=False,
                                   diagnostics={}))
    path = out / "shard-00000.h5"
    write_shard(path, records, size=size, config_json="{}", config_hash="bench", planned_ids=[r.id for r in records],
                rejects=[], versions={})
    return path


def time_ours_from_shard(shard_dir: Path, batch: int, repeats: int, config: MultiCropConfig) -> float:
    """Seconds per sample of ours: ShardDataset reads (image + 3 maps) + multi_crop on the batch."""
    from trainer.data.shard_dataset import ShardDataset

    ds = ShardDataset(shard_dir)
    gen = torch.Generator().manual_seed(0)
    n = min(batch, len(ds))

    def run():
        items = [ds[i] for i in range(n)]
        images = torch.stack([it["image"] for it in items])
        maps = torch.stack([it["maps"] for it in items]).float().div_(255.0)
        multi_crop(images, maps, config=config, generator=gen, binary_channels=(0, 2))

    return best_of(run, repeats, warmup=False) / n


def time_shard_reads(shard_dir: Path, repeats: int) -> float:
    """Seconds per sample of the CPU side alone when the crops run on a GPU: ShardDataset reads + collate."""
    from trainer.data.shard_dataset import ShardDataset

    ds = ShardDataset(shard_dir)

    def run():
        items = [ds[i] for i in range(len(ds))]
        torch.stack([it["image"] for it in items]), torch.stack([it["maps"] for it in items])

    return best_of(run, repeats, warmup=False) / len(ds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (8 reference samples, batch 16)")
    parser.add_argument("--batch", type=int, default=64, help="batch size for ours")
    parser.add_argument("--ref-samples", type=int, default=24, help="samples through the reference per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is kept)")
    parser.add_argument("--profile", action="store_true", help="print the operator profile of ours")
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "isic_sample", help="labelled ISIC folder for the end-to-end comparison ('' to skip)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.ref_samples, args.repeats = 16, 8, 2
    torch.set_num_threads(1)
    cv2_threads = None
    try:  # PIL and torchvision-on-PIL are single-threaded already; keep OpenCV (if imported) quiet too
        import cv2

        cv2.setNumThreads(1)
        cv2_threads = 1
    except ImportError:
        pass
    images = _inputs(max(args.batch, args.ref_samples), 256, seed=0)
    config = MultiCropConfig.dino()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cv2 threads={cv2_threads}, "
          f"inputs 256x256 uint8, views 2x224 + 8x96")
    # Interleave the two so that load from other processes hits both alike.
    ref, ours = [], []
    for _ in range(args.repeats):
        ref.append(time_reference(images[: args.ref_samples], 1))
        ours.append(time_ours(images[: args.batch], 1, config))
    t_ref, t_ours = min(ref), min(ours)
    print(f"reference (DINO torchvision/PIL, per sample): {t_ref * 1e3:8.2f} ms  = {1 / t_ref:8.1f} samples/s/core")
    print(f"ours (multi_crop, batch {args.batch}, per sample): {t_ours * 1e3:8.2f} ms  = "
          f"{1 / t_ours:8.1f} samples/s/core")
    print(f"speed-up: {t_ref / t_ours:.1f}x (target >= 20x)")
    if args.real and Path(args.real).is_dir():
        import tempfile

        paths = sorted((Path(args.real) / "images").glob("*.jpg"))[: max(args.ref_samples, 8)]
        with tempfile.TemporaryDirectory() as tmp:
            _shard_from(paths, Path(tmp))
            ref_e2e, ours_e2e, reads = [], [], []
            for _ in range(args.repeats):
                ref_e2e.append(time_reference_files(paths, 1))
                ours_e2e.append(time_ours_from_shard(Path(tmp), len(paths), 1, config))
                reads.append(time_shard_reads(Path(tmp), 1))
        t_ref_e2e, t_ours_e2e = min(ref_e2e), min(ours_e2e)
        print(f"end to end on {len(paths)} real ISIC JPEGs ({args.real}):")
        print(f"  reference (PIL decode + recipe, per sample): {t_ref_e2e * 1e3:8.2f} ms = "
              f"{1 / t_ref_e2e:8.1f} samples/s/core")
        print(f"  ours (HDF5 shard read + multi_crop + maps): {t_ours_e2e * 1e3:8.2f} ms = "
              f"{1 / t_ours_e2e:8.1f} samples/s/core")
        print(f"  speed-up: {t_ref_e2e / t_ours_e2e:.1f}x (target >= 20x)")
        t_read = min(reads)
        print(f"  CPU side when the crops run on a GPU (shard read + collate only): {t_read * 1e3:8.2f} ms = "
              f"{1 / t_read:8.1f} samples/s/core -> {t_ref_e2e / t_read:.0f}x the reference per CPU core "
              "(GPU time not included)")
    if args.profile:
        profile_ours(images[: args.batch], config)


if __name__ == "__main__":
    main()
