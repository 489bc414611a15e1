"""S^3-Net-style label-free pseudo-masks: losses, lesion-cluster choice, quality on synthetic lesions, the run."""
from __future__ import annotations

import dataclasses
import inspect
import json

import cv2
import numpy as np
import pytest
import torch

from pipeline.pseudomask.per_image import PseudoMaskConfig, make_pseudo_mask
from pipeline.pseudomask.s3net import S3NetConfig, lesion_clusters, s3net_segment, spatial_continuity_loss
from pipeline.pseudomask.seeds import coarse_lesion_map, field_of_view, to_lab
from pipeline.run import RunConfig, run_pseudomasks, sample_seed
from pipeline.shards import ShardReader, find_shards, verify
from pipeline.synth import generate_sample, write_synthetic_dataset
from trainer.eval.metrics import binary_scores

SIZE = (96, 72)                      # (W, H) of the synthetic images: small, so the tests stay fast
FAST = S3NetConfig(iterations=12)    # fewer steps than the default
S3NET = PseudoMaskConfig(method="s3net", s3net=FAST)


def _squash(mask: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5


def _inputs(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = generate_sample(3, index, size=SIZE)
    fov = field_of_view(s.clean)
    coarse, _ = coarse_lesion_map(to_lab(s.clean), fov)
    return s.clean, fov, coarse, s.lesion


def _reference_continuity(r: np.ndarray) -> float:
    """Independent loop version of Kim et al.'s L1 continuity loss over one (K, H, W) map."""
    k, h, w = r.shape
    vertical = sum(abs(r[c, i + 1, j] - r[c, i, j]) for c in range(k) for i in range(h - 1) for j in range(w))
    horizontal = sum(abs(r[c, i, j + 1] - r[c, i, j]) for c in range(k) for i in range(h) for j in range(w - 1))
    return vertical / (k * (h - 1) * w) + horizontal / (k * h * (w - 1))


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 2, 2), (4, 6, 3)])
def test_spatial_continuity_loss_matches_reference_and_has_gradient(shape):
    r = torch.randn((1,) + shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64,
                    requires_grad=True)
    loss = spatial_continuity_loss(r)
    assert loss.item() == pytest.approx(_reference_continuity(r.detach()[0].numpy()), rel=1e-10)
    loss.backward()
    assert r.grad is not None and r.grad.abs().sum() > 0
    const = torch.ones((1,) + shape, requires_grad=True)
    assert spatial_continuity_loss(const).item() == 0.0


def test_spatial_continuity_loss_rejects_bad_shape():
    with pytest.raises(ValueError, match="response"):
        spatial_continuity_loss(torch.zeros(3, 4, 4))


def test_signature_takes_no_ground_truth():
    names = set(inspect.signature(s3net_segment).parameters)
    assert names == {"small_rgb", "coarse", "fov", "config", "seed"}


def test_lesion_choice_follows_the_partition_not_the_ids():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16).reshape(8, 8)           # four horizontal bands, ids 0..3
    coarse = np.zeros((8, 8), bool)
    coarse[2:6] = True                                           # bands 1 and 2 wholly, nothing else
    coarse[0, :3] = True                                         # a minority of band 0
    fov = np.ones((8, 8), bool)
    assert lesion_clusters(labels, coarse, fov).tolist() == [1, 2]
    perm = rng.permutation(16)[:4]                               # relabel the clusters with other ids
    chosen = lesion_clusters(perm[labels], coarse, fov)
    assert sorted(chosen.tolist()) == sorted(perm[[1, 2]].tolist())
    np.testing.assert_array_equal(np.isin(perm[labels], chosen), np.isin(labels, [1, 2]))
    assert lesion_clusters(labels, np.zeros((8, 8), bool), fov).size == 0
    outside = fov.copy()
    outside[:, 4:] = False                                       # only the left half counts
    coarse_left = np.zeros((8, 8), bool)
    coarse_left[:, :4] = True
    assert lesion_clusters(labels, coarse_left, outside).tolist() == [0, 1, 2, 3]


def test_empty_coarse_map_gives_an_empty_mask_without_training():
    image, fov, _, _ = _inputs(0)
    prob, mask = s3net_segment(image, coarse=np.zeros(fov.shape, bool), fov=fov, config=FAST)
    assert prob.shape == mask.shape == fov.shape and prob.dtype == np.float32 and mask.dtype == bool
    assert not prob.any() and not mask.any()


def test_uniform_image_has_no_lesion():
    rng = np.random.default_rng(0)
    image = np.clip(np.full((72, 96, 3), (210, 165, 145), np.float32) + rng.normal(0, 3, (72, 96, 1)), 0, 255)
    r = make_pseudo_mask(image.astype(np.uint8), size=64, config=S3NET)
    assert r.no_lesion and not r.mask.any() and not r.prob.any()


def test_finds_synthetic_lesions():
    scores = []
    for i in range(8):
        image, fov, coarse, truth = _inputs(i)
        prob, mask = s3net_segment(image, coarse=coarse, fov=fov, config=FAST, seed=i)
        assert prob.shape == mask.shape == truth.shape and prob.dtype == np.float32 and mask.dtype == bool
        assert 0 <= prob.min() and prob.max() <= 1
        scores.append(binary_scores(mask, truth)["jaccard"])
        if i in (0, 1, 2, 5, 7):  # lesions the clusters separate: the soft map is high on them, low elsewhere
            assert prob[truth].mean() > 0.5 and prob[~truth].mean() < 0.2, i
            assert 0.0 < prob[truth].mean() < 0.99, i               # soft, not the coarse-map fallback
    # measured: 0.94 0.92 0.96 0.05 0.99 0.86 0.53 0.92 (image 3: the coarse map misses it too, J 0.04)
    assert np.mean(scores) >= 0.7, scores
    assert np.median(scores) >= 0.85, scores


def test_same_seed_same_output():
    image, fov, coarse, _ = _inputs(1)
    a = s3net_segment(image, coarse=coarse, fov=fov, config=FAST, seed=7)
    b = s3net_segment(image, coarse=coarse, fov=fov, config=FAST, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.get_num_threads() >= 1                            # the thread setting is put back


def test_make_pseudo_mask_s3net_branch():
    s = generate_sample(3, 2, size=SIZE)
    r = make_pseudo_mask(s.image, size=64, config=S3NET, seed=5)
    assert not r.no_lesion and r.prob.dtype == np.float32 and r.mask.shape == (64, 64)
    assert binary_scores(r.mask, _squash(s.lesion, 64))["jaccard"] > 0.5
    walker = make_pseudo_mask(s.image, size=64)
    assert set(r.diagnostics) == set(walker.diagnostics)
    np.testing.assert_array_equal(r.cleaned, walker.cleaned)    # same hair removal before the branch


@pytest.mark.parametrize("kwargs, name", [({"iterations": 0}, "iterations"), ({"n_responses": 1}, "n_responses"),
                                          ({"lesion_overlap": 1.0}, "lesion_overlap"), ({"lr": 0}, "lr"),
                                          ({"long_side": 8}, "long_side"), ({"coord_weight": -1}, "coord_weight")])
def test_config_validation_names_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        S3NetConfig(**kwargs)


def test_method_is_validated_and_changes_the_config_hash():
    with pytest.raises(ValueError, match="method"):
        PseudoMaskConfig(method="kmeans")
    walker, s3 = RunConfig(), RunConfig(pseudo=PseudoMaskConfig(method="s3net"))
    assert walker.hash != s3.hash
    assert "s3net" not in json.loads(walker.to_json())["pseudo"]     # walker hash as before --method existed
    assert json.loads(s3.to_json())["pseudo"]["s3net"] == dataclasses.asdict(S3NetConfig())
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(0, "b") != sample_seed(1, "b")


def test_run_with_s3net_writes_verified_shards(tmp_path):
    write_synthetic_dataset(tmp_path / "data", 3, seed=4, size=SIZE, progress=False)
    config = RunConfig(size=48, shard_size=2, pseudo=S3NET)
    summary = run_pseudomasks(tmp_path / "data", tmp_path / "out", config=config, progress=False)
    assert summary.n_samples == 3 and summary.n_rejected == 0
    assert verify(tmp_path / "out") == []
    with ShardReader(find_shards(tmp_path / "out")[0]) as shard:
        assert shard.config["pseudo"]["method"] == "s3net"
        assert shard.attrs["config_hash"] == config.hash
    with pytest.raises(ValueError, match="another configuration"):   # resuming with the walker is refused
        run_pseudomasks(tmp_path / "data", tmp_path / "out", config=RunConfig(size=48, shard_size=2),
                        progress=False)


def test_cli_method_option(tmp_path):
    from click.testing import CliRunner

    import cli

    write_synthetic_dataset(tmp_path / "data", 2, seed=5, size=SIZE, progress=False)
    result = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(tmp_path / "data"), "--out",
                                           str(tmp_path / "out"), "--size", "48", "--method", "s3net",
                                           "--seed", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    with ShardReader(find_shards(tmp_path / "out")[0]) as shard:
        assert shard.config["pseudo"]["method"] == "s3net" and shard.config["seed"] == 3
    bad = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(tmp_path / "data"), "--out",
                                        str(tmp_path / "o2"), "--method", "kmeans"])
    assert bad.exit_code != 0 and "kmeans" in bad.output
