"""Progressive imbalance-aware CutMix: masks follow images exactly, the minority bias and its schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data.cutmix import PICConfig, minority_class, pic_bias, pic_cutmix


def _batch(b=6, size=32, seed=0, lesion_frac=0.1):
    """Images whose channel 0 encodes the mask (so consistency is checkable) and channel 1 the sample index."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, 1, size, size)
    for i in range(b):
        r = max(2, int(size * np.sqrt(lesion_frac / np.pi)))
        cy, cx = (torch.randint(r, size - r, (2,), generator=g)).tolist()
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        masks[i, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
    images = torch.stack([masks[:, 0] * 2 - 1, torch.arange(b).float()[:, None, None].expand(b, size, size),
                          torch.rand(b, size, size, generator=g)], dim=1)
    return images, masks


@pytest.mark.parametrize("bias", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_follow_images_exactly(bias, seed):
    images, masks = _batch(seed=seed)
    mixed, mixed_masks, boxes = pic_cutmix(images, masks, bias=bias, generator=torch.Generator().manual_seed(seed))
    # channel 0 encodes the mask: it must agree everywhere after mixing
    assert torch.equal(mixed[:, 0], mixed_masks[:, 0] * 2 - 1)
    for i, (j, y0, y1, x0, x1, cy, cx, _) in enumerate(boxes):
        inside = torch.zeros(images.shape[-2:], dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert y0 <= cy < y1 and x0 <= cx < x1
        # pixels come from the partner inside the box and from the sample itself outside
        assert torch.equal(mixed[i, 1][inside], torch.full((int(inside.sum()),), float(j)))
        assert torch.equal(mixed[i, 1][~inside], torch.full((int((~inside).sum()),), float(i)))
        assert torch.equal(mixed[i, :, ~inside], images[i, :, ~inside])
        assert torch.equal(mixed_masks[i, 0][inside], masks[j, 0][inside])
    assert mixed.dtype == images.dtype and mixed_masks.shape == masks.shape


def test_inputs_are_not_modified():
    images, masks = _batch()
    before = images.clone(), masks.clone()
    pic_cutmix(images, masks, bias=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])


def test_full_bias_puts_every_centre_on_the_minority_class():
    images, masks = _batch(b=8, lesion_frac=0.05)
    assert minority_class(masks) == 1
    hits = 0
    for seed in range(20):
        _, _, boxes = pic_cutmix(images, masks, bias=1.0, generator=torch.Generator().manual_seed(seed))
        for j, *_, cy, cx, from_minority in boxes:
            assert from_minority
            hits += int(masks[j, 0, cy, cx] == 1)
    assert hits == 20 * 8


def test_zero_bias_is_uniform_cutmix():
    images, masks = _batch(b=8, lesion_frac=0.05)
    lesion_share = float(masks.mean())
    on_lesion, n = 0, 0
    for seed in range(60):
        _, _, boxes = pic_cutmix(images, masks, bias=0.0, generator=torch.Generator().manual_seed(seed))
        for j, *_, cy, cx, from_minority in boxes:
            assert not from_minority
            on_lesion += int(masks[j, 0, cy, cx] == 1)
            n += 1
    # uniform centres land on lesion pixels about as often as lesions cover the image (~5 %), far below 100 %
    assert abs(on_lesion / n - lesion_share) < 0.06


def test_minority_is_skin_when_lesions_fill_the_images():
    images, masks = _batch()
    masks = 1 - masks
    assert minority_class(masks) == 0
    _, _, boxes = pic_cutmix(images, masks, bias=1.0, generator=torch.Generator().manual_seed(0))
    assert all(masks[j, 0, cy, cx] == 0 for j, *_, cy, cx, _ in boxes)


def test_schedule_endpoints():
    assert pic_bias(0.0, 0.5) == 1.0
    assert pic_bias(0.25, 0.5) == pytest.approx(0.5)
    assert pic_bias(0.5, 0.5) == 0.0
    assert pic_bias(1.0, 0.5) == 0.0
    assert pic_bias(1.0, 1.0) == 0.0 and pic_bias(0.999, 1.0) > 0.0


def test_same_generator_seed_same_mix():
    images, masks = _batch()
    a = pic_cutmix(images, masks, bias=0.7, generator=torch.Generator().manual_seed(5))
    b = pic_cutmix(images, masks, bias=0.7, generator=torch.Generator().manual_seed(5))
    c = pic_cutmix(images, masks, bias=0.7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    assert a[2] != c[2]


def test_box_area_stays_in_range():
    images, masks = _batch(size=64)
    areas = []
    for seed in range(30):
        _, _, boxes = pic_cutmix(images, masks, bias=0.0, generator=torch.Generator().manual_seed(seed),
                                 area=(0.2, 0.3))
        areas += [(y1 - y0) * (x1 - x0) / 64 ** 2 for _, y0, y1, x0, x1, *_ in boxes]
    assert max(areas) <= 0.3 * 1.1 and np.median(areas) > 0.1  # clipping at the border only shrinks boxes


@pytest.mark.parametrize("kwargs", [{"prob": 1.5}, {"area": (0.0, 0.5)}, {"area": (0.6, 0.5)}, {"anneal": 0.0}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PICConfig(**kwargs)


def test_bad_shapes_are_refused():
    images, masks = _batch()
    with pytest.raises(ValueError, match="masks"):
        pic_cutmix(images, masks[:, 0], bias=0.5, generator=torch.Generator())
    with pytest.raises(ValueError, match="bias"):
        pic_cutmix(images, masks, bias=1.5, generator=torch.Generator())


def test_finetune_mixes_batches_on_the_annealed_schedule(tmp_path, monkeypatch):
    import trainer.train.finetune as ft
    from pipeline.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 24, seed=2, size=(64, 48), progress=False)
    seen = []
    real = ft.pic_cutmix

    def spy(inputs, targets, *, bias, generator, area):
        seen.append(bias)
        mixed, mixed_targets, boxes = real(inputs, targets, bias=bias, generator=generator, area=area)
        assert mixed_targets.shape == targets.shape and set(mixed_targets.unique().tolist()) <= {0.0, 1.0}
        return mixed, mixed_targets, boxes

    monkeypatch.setattr(ft, "pic_cutmix", spy)
    config = ft.FinetuneConfig(init="scratch", arch="vit_tiny_patch16_224", img_size=32, iters=6, batch_size=4,
                               eval_every=3, decoder_hidden=16, pic=PICConfig(prob=1.0, anneal=0.5))
    ft.finetune(tmp_path / "data", 0.5, tmp_path / "run", config=config, device="cpu", progress=False)
    assert seen == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0, 0.0])
    import json

    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["pic"]
    assert saved == {"prob": 1.0, "area": [0.1, 0.5], "anneal": 0.5}
