"""Tests for trainer.data.multicrop / trainer.data.colour: alignment of maps with crops, determinism, shapes, colour ops."""
from __future__ import annotations

import math

import pytest
import torch

from trainer.data import colour
from trainer.data.multicrop import MultiCrop, MultiCropConfig, multi_crop

S = 64


def _shape_batch(n: int, size: int = S, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark noisy background with one bright ellipse per sample; the same ellipse as a 0/1 mask.

    Returns images (n, 3, size, size) uint8 and masks (n, 1, size, size) float32. The ellipses differ in
    centre, radii and tilt so that no dihedral symmetry makes a wrong transform look right.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    masks = []
    for _ in range(n):
        cx, cy = (0.3 + 0.4 * torch.rand(2, generator=g)) * size
        a, b = (0.15 + 0.15 * torch.rand(2, generator=g)) * size
        t = float(torch.rand(1, generator=g)) * math.pi
        u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
        v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
        masks.append(((u / a) ** 2 + (v / b) ** 2 <= 1).float())
    mask = torch.stack(masks)[:, None]
    noise = torch.randint(0, 40, (n, 3, size, size), generator=g)
    images = (noise + mask * 200).clamp(0, 255).to(torch.uint8)
    return images, mask


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of (..., H, W)."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(-2, -1))
        out += [r, torch.flip(r, dims=(-1,))]
    return out


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, float((a | b).sum()))


# ---------------------------------------------------------------- geometry: maps follow the image


def test_flips_and_rotations_are_pixel_exact():
    images, mask = _shape_batch(16)
    cfg = MultiCropConfig.geometric(
        n_global=4, global_size=S, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), n_local=0
    )
    out = multi_crop(images, mask, config=cfg, generator=torch.Generator().manual_seed(3), binary_channels=[0])
    seen = set()
    for view, vmap in zip(out.global_views, out.global_maps):
        for i in range(images.shape[0]):
            img = images[i].float() / 255
            matches = [
                j for j, d in enumerate(_dihedral(img)) if torch.allclose(view[i], d, atol=1e-4, rtol=0)
            ]
            assert len(matches) == 1, f"view of sample {i} is not exactly one flip/rotation of the input"
            j = matches[0]
            seen.add(j)
            assert torch.equal(vmap[i], _dihedral(mask[i])[j]), "mask not transformed like its image"
    assert len(seen) >= 6, f"only {len(seen)} of the 8 flips/rotations drawn in 64 views"


@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.2, 0.5)])
@pytest.mark.parametrize("rot90", [True, False])
def test_random_crops_keep_mask_aligned(size, scale, rot90):
    images, mask = _shape_batch(12, seed=size)
    cfg = MultiCropConfig.geometric(global_size=size, global_scale=scale, rot90=rot90, n_local=1, local_size=16)
    out = multi_crop(images, mask, config=cfg, generator=torch.Generator().manual_seed(1), binary_channels=[0])
    for view, vmap in zip(out.global_views, out.global_maps):
        shape_in_image = view.mean(dim=1) > (20 + 100) / 255  # halfway between background and ellipse
        shape_in_mask = vmap[:, 0] > 0.5
        assert set(vmap.unique().tolist()) <= {0.0, 1.0}, "binary channel not thresholded"
        for i in range(images.shape[0]):
            if shape_in_mask[i].sum() < 20:  # crop missed the ellipse: nothing to compare
                continue
            assert _iou(shape_in_image[i], shape_in_mask[i]) >= 0.98


def test_misaligned_mask_fails_the_iou_check():
    """The alignment check has teeth: a mask shifted by two pixels falls below the bar."""
    images, mask = _shape_batch(4)
    shifted = torch.roll(mask, shifts=2, dims=-1)
    cfg = MultiCropConfig.geometric(global_size=S, global_scale=(1.0, 1.0), ratio=(1.0, 1.0), n_local=0)
    out = multi_crop(images, shifted, config=cfg, generator=torch.Generator().manual_seed(0))
    view, vmap = out.global_views[0], out.global_maps[0]
    ious = [_iou(view[i].mean(0) > 120 / 255, vmap[i, 0] > 0.5) for i in range(4)]
    assert max(ious) < 0.98


def test_probability_maps_stay_probabilities_and_match_image_resampling():
    images, mask = _shape_batch(6)
    prob = torch.rand(6, 1, S, S, generator=torch.Generator().manual_seed(5))
    maps = torch.cat([mask, prob, images[:, :1].float() / 255], dim=1)  # channel 2 = image red channel
    cfg = MultiCropConfig.geometric(global_size=40, n_local=0)
    out = multi_crop(images, maps, config=cfg, generator=torch.Generator().manual_seed(2), binary_channels=[0])
    for view, vmap in zip(out.global_views, out.global_maps):
        assert vmap.shape == (6, 3, 40, 40)
        assert 0.0 <= vmap[:, 1].min() and vmap[:, 1].max() <= 1.0
        # same grid: the resampled red channel equals the view's red channel
        torch.testing.assert_close(vmap[:, 2], view[:, 0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- randomness


def test_same_seed_same_views_different_seed_different_views():
    images, mask = _shape_batch(4)
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=3)

    def run(seed):
        return multi_crop(images, mask, config=cfg, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a.global_views + a.global_maps + a.local_views, b.global_views + b.global_maps + b.local_views):
        assert torch.equal(x, y)
    for x, y in zip(a.global_views + a.local_views, c.global_views + c.local_views):
        assert not torch.allclose(x, y)


def test_randomness_only_from_the_generator():
    images, _ = _shape_batch(2)
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=2)
    torch.manual_seed(0)
    a = multi_crop(images, config=cfg, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    b = multi_crop(images, config=cfg, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a.local_views, b.local_views))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_cpu_chunking_does_not_change_the_result(chunk):
    images, mask = _shape_batch(5)
    base = MultiCropConfig(global_size=32, local_size=16, n_local=2)
    chunked = MultiCropConfig(global_size=32, local_size=16, n_local=2, cpu_chunk=chunk)
    a = multi_crop(images, mask, config=base, generator=torch.Generator().manual_seed(4))
    b = multi_crop(images, mask, config=chunked, generator=torch.Generator().manual_seed(4))
    for x, y in zip(a.global_views + a.global_maps + a.local_views, b.global_views + b.global_maps + b.local_views):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- shapes, dtypes, ranges


@pytest.mark.parametrize("n_global,n_local,g,l", [(2, 8, 32, 16), (1, 0, 24, 8), (3, 2, 40, 20)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_output_shapes_dtypes_and_ranges(n_global, n_local, g, l, dtype):
    images, mask = _shape_batch(3)
    if dtype.is_floating_point:
        images = images.to(dtype) / 255
    cfg = MultiCropConfig(n_global=n_global, global_size=g, n_local=n_local, local_size=l)
    out = MultiCrop(cfg)(images, torch.cat([mask, mask], 1), generator=torch.Generator().manual_seed(0))
    assert [t.shape for t in out.global_views] == [(3, 3, g, g)] * n_global
    assert [t.shape for t in out.global_maps] == [(3, 2, g, g)] * n_global
    assert [t.shape for t in out.local_views] == [(3, 3, l, l)] * n_local
    lo = min((0 - m) / s for m, s in zip(cfg.mean, cfg.std))
    hi = max((1 - m) / s for m, s in zip(cfg.mean, cfg.std))
    for t in out.global_views + out.local_views:
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
        assert lo - 1e-4 <= t.min() and t.max() <= hi + 1e-4


def test_unnormalised_output_is_in_unit_range_and_uint8_equals_float_input():
    images, _ = _shape_batch(3)
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=2, normalise=False)
    a = multi_crop(images, config=cfg, generator=torch.Generator().manual_seed(0))
    b = multi_crop(images.float() / 255, config=cfg, generator=torch.Generator().manual_seed(0))
    for x, y in zip(a.global_views + a.local_views, b.global_views + b.local_views):
        assert 0 <= x.min() and x.max() <= 1
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_maps_are_optional():
    images, _ = _shape_batch(2)
    out = multi_crop(images, config=MultiCropConfig(global_size=32, local_size=16), generator=torch.Generator())
    assert out.global_maps == [] and len(out.global_views) == 2 and len(out.local_views) == 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(global_scale=(0.5, 0.4)), "global_scale"),
        (dict(local_scale=(0.0, 0.4)), "local_scale"),
        (dict(grey_p=1.5), "grey_p"),
        (dict(global_blur_p=(1.0, -0.1)), r"global_blur_p\[1\]"),
        (dict(hue=0.7), "hue"),
        (dict(local_size=0), "local_size"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiCropConfig(**kwargs)


@pytest.mark.parametrize(
    "images,maps,match",
    [
        (torch.zeros(2, 1, 8, 8), None, r"images must be \(B, 3, H, W\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), None, "uint8 or float"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 9, 8), "maps must be"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "maps must be float"),
    ],
)
def test_input_validation(images, maps, match):
    with pytest.raises(ValueError, match=match):
        multi_crop(images, maps, config=MultiCropConfig(), generator=torch.Generator())


# ---------------------------------------------------------------- photometric operations


def _flat(n=4, h=8, w=8, seed=0):
    return 0.2 + 0.6 * torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _ones(n):
    return torch.ones(n)


def test_colour_matrix_identity():
    x = _flat()
    a, b = colour.colour_matrix(_ones(4), _ones(4), _ones(4), torch.zeros(4), torch.zeros(4, dtype=bool),
                                colour.mean_luma(x))
    torch.testing.assert_close(colour.apply_colour_matrix(x, a, b), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hue", [0.02, 0.1, -0.25])
def test_hue_changes_chroma_direction_and_keeps_luma(hue):
    x = _flat()
    a, b = colour.colour_matrix(_ones(4), _ones(4), _ones(4), torch.full((4,), hue), torch.zeros(4, dtype=bool),
                                colour.mean_luma(x))
    y = colour.apply_colour_matrix(x, a, b)
    luma = torch.tensor(colour.LUMA)[:, None, None]
    unclipped = ((y > 0) & (y < 1)).all(dim=1)
    torch.testing.assert_close((y * luma).sum(1)[unclipped], (x * luma).sum(1)[unclipped], atol=1e-5, rtol=0)
    assert (y - x).abs().max() > 0.01 * abs(hue) / 0.02  # the colour did change
    # a grey pixel has no hue: it stays grey
    grey = torch.full((1, 3, 2, 2), 0.5)
    a1, b1 = colour.colour_matrix(_ones(1), _ones(1), _ones(1), torch.full((1,), hue), torch.zeros(1, dtype=bool),
                                  colour.mean_luma(grey))
    torch.testing.assert_close(colour.apply_colour_matrix(grey, a1, b1), grey, atol=1e-6, rtol=0)


def test_hue_rotation_matches_torchvision_direction_for_small_shifts():
    """Our YIQ rotation moves colours the same way as torchvision's HSV hue shift (small factor)."""
    from torchvision.transforms.functional import adjust_hue

    x = _flat(n=1, h=16, w=16, seed=3)
    a, b = colour.colour_matrix(_ones(1), _ones(1), _ones(1), torch.full((1,), 0.03), torch.zeros(1, dtype=bool),
                                colour.mean_luma(x))
    ours = colour.apply_colour_matrix(x, a, b) - x
    ref = adjust_hue(x[0], 0.03)[None] - x
    cos = torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0)
    assert cos > 0.5  # same direction (YIQ rotation ~ HSV shift); a wrong sign gives about -0.67


def test_grey_makes_channels_equal_to_luma_and_leaves_others():
    x = _flat()
    grey = torch.tensor([True, False, True, False])
    a, b = colour.colour_matrix(_ones(4), _ones(4), _ones(4), torch.zeros(4), grey, colour.mean_luma(x))
    y = colour.apply_colour_matrix(x, a, b)
    luma = (x * torch.tensor(colour.LUMA)[:, None, None]).sum(1)
    for c in range(3):
        torch.testing.assert_close(y[grey, c], luma[grey], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[~grey], x[~grey], atol=1e-5, rtol=0)


def test_brightness_contrast_saturation_match_torchvision():
    from torchvision.transforms import functional as TF

    x = _flat(n=1, h=16, w=16, seed=1)
    cases = [((1.3, 1, 1), lambda t: TF.adjust_brightness(t, 1.3)),
             ((1, 0.7, 1), lambda t: TF.adjust_contrast(t, 0.7)),
             ((1, 1, 1.2), lambda t: TF.adjust_saturation(t, 1.2))]
    for (bf, cf, sf), ref in cases:
        a, b = colour.colour_matrix(torch.tensor([bf]), torch.tensor([cf]), torch.tensor([sf]), torch.zeros(1),
                                    torch.zeros(1, dtype=bool), colour.mean_luma(x))
        torch.testing.assert_close(colour.apply_colour_matrix(x, a, b), ref(x[0])[None], atol=2e-3, rtol=0)


def test_solarise_inverts_above_threshold_only():
    x = torch.linspace(0, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    y = colour.solarise(x, torch.tensor([0.5, 2.0]))
    hi = x[0] >= 0.5
    torch.testing.assert_close(y[0][hi], 1 - x[0][hi])
    torch.testing.assert_close(y[0][~hi], x[0][~hi])
    torch.testing.assert_close(y[1], x[1])  # threshold above 1: untouched


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_blur_keeps_mean_smooths_and_tiny_sigma_is_identity(sigma):
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    y = colour.gaussian_blur(x, torch.tensor([sigma, 1e-4]), radius=5)
    torch.testing.assert_close(y[1], x[1])
    assert y[0].std() < 0.8 * x[0].std()
    torch.testing.assert_close(y[0].mean(), x[0].mean(), atol=0.01, rtol=0)
    # independent reference: dense 2-D Gaussian on the reflect-padded image, centre pixel
    t = torch.arange(-5, 6, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k2 = torch.outer(k, k) / k.sum() ** 2
    torch.testing.assert_close(y[0, :, 12, 12], (x[0, :, 7:18, 7:18] * k2).sum((1, 2)), atol=1e-5, rtol=0)


def test_pipeline_solarise_and_grey_probabilities_take_effect():
    """With grey p=1 every view is grey; with solarise p=1 and no jitter the view equals the solarised crop."""
    images, _ = _shape_batch(4)
    grey_cfg = MultiCropConfig(global_size=32, local_size=16, n_local=1, grey_p=1.0, normalise=False)
    out = multi_crop(images, config=grey_cfg, generator=torch.Generator().manual_seed(0))
    for v in out.global_views + out.local_views:
        torch.testing.assert_close(v[:, 0], v[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(v[:, 0], v[:, 2], atol=1e-5, rtol=0)
    geo = MultiCropConfig.geometric(global_size=32, n_local=0)
    sol = MultiCropConfig.geometric(global_size=32, n_local=0, global_solarise_p=(1.0,))
    a = multi_crop(images, config=geo, generator=torch.Generator().manual_seed(0))
    b = multi_crop(images, config=sol, generator=torch.Generator().manual_seed(0))
    for x, y in zip(a.global_views, b.global_views):
        torch.testing.assert_close(y, torch.where(x >= 0.5, 1 - x, x), atol=1e-6, rtol=0)


def test_sync_free_device_path_matches_the_host_path(monkeypatch):
    """The CUDA code path (no host reads, identity parameters for undrawn samples) run here on CPU."""
    import trainer.data.multicrop as augment

    images, mask = _shape_batch(6)
    cfg = MultiCropConfig(global_size=32, local_size=16, n_local=3, global_solarise_p=(0.5,))
    host = multi_crop(images, mask, config=cfg, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(augment, "_host_path", lambda device: False)
    device = multi_crop(images, mask, config=cfg, generator=torch.Generator().manual_seed(9))
    for x, y in zip(host.global_views + host.global_maps + host.local_views,
                    device.global_views + device.global_maps + device.local_views):
        torch.testing.assert_close(x, y, atol=0.02, rtol=0)  # only the blur tail truncation differs
