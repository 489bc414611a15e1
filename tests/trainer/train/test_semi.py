"""Semi-supervised fine-tuning: each batch holds labelled crops and pool crops with pseudo-masks, weighted as stated;
test-time flip/rotation averaging."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from test_pretrain import shards  # noqa: F401  (the tiny shard fixture)

import trainer.train.finetune as ft
from pipeline.synth import write_synthetic_dataset
from trainer.losses.seg import seg_loss


def test_semi_loss_is_expert_plus_weighted_pseudo_with_the_band_ignored():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 16, 16, generator=g, requires_grad=True)
    targets = (torch.rand(5, 1, 16, 16, generator=g) > 0.5).float()
    prob = torch.rand(3, 1, 16, 16, generator=g)
    loss, parts = ft.semi_loss(logits, targets, 2, prob, weight=0.3, band=(0.1, 0.9))
    expert = seg_loss(logits[:2], targets[:2])
    uncertain = (prob > 0.1) & (prob < 0.9)
    pseudo = seg_loss(logits[2:], targets[2:], prob, band=(0.1, 0.9), band_weight=0.0)
    assert loss.item() == pytest.approx(expert.item() + 0.3 * pseudo.item(), rel=1e-6)
    assert parts["expert"] == pytest.approx(expert.item()) and parts["pseudo"] == pytest.approx(pseudo.item())
    loss.backward()
    grad = logits.grad
    assert grad[:2].abs().sum() > 0 and grad[2:].abs().sum() > 0
    assert torch.all(grad[2:][uncertain] == 0)  # the walker's uncertain band teaches nothing
    only_expert, _ = ft.semi_loss(logits, targets, 2, prob, weight=0.0, band=(0.1, 0.9))
    assert only_expert.item() == pytest.approx(expert.item(), rel=1e-6)


def test_each_fine_tuning_batch_mixes_both_kinds_with_the_ramped_weight(shards, tmp_path, monkeypatch):  # noqa: F811
    data = tmp_path / "data"
    write_synthetic_dataset(data, 16, seed=4, size=(64, 48), progress=False)
    seen = []
    real = ft.semi_loss

    def spy(logits, targets, n_labelled, pseudo_prob, *, weight, band):
        seen.append((logits.shape[0], n_labelled, None if pseudo_prob is None else pseudo_prob.shape[0], weight,
                     band, set(targets[n_labelled:].unique().tolist())))
        return real(logits, targets, n_labelled, pseudo_prob, weight=weight, band=band)

    monkeypatch.setattr(ft, "semi_loss", spy)
    config = ft.FinetuneConfig(init="scratch", arch="vit_tiny_patch16_224", img_size=32, iters=5, batch_size=3,
                               eval_every=5, decoder_hidden=16, pseudo_shards=str(shards), pseudo_batch=2,
                               pseudo_weight=0.5, pseudo_ramp_frac=0.4)
    ft.finetune(data, 0.5, tmp_path / "run", config=config, device="cpu", progress=False)
    assert [s[:3] for s in seen] == [(5, 3, 2)] * 5  # 3 labelled + 2 pool crops in every step
    # ramp over 0.4 * 5 = 2 iterations: 0.25, 0.5, then the full 0.5
    assert [s[3] for s in seen] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5])
    assert all(s[4] == (0.1, 0.9) and s[5] <= {0.0, 1.0} for s in seen)
    seen.clear()
    ft.finetune(data, 0.5, tmp_path / "plain", config=dataclasses.replace(config, pseudo_shards=None), device="cpu",
                progress=False)
    assert [s[:3] for s in seen] == [(3, 3, None)] * 5  # off: labelled crops only


def test_the_pool_leaves_out_pseudo_masks_below_the_confidence_floor(tmp_path):
    from pipeline.run import run_pseudomasks
    from pipeline.shards import ShardReader, find_shards

    write_synthetic_dataset(tmp_path / "data", 12, seed=6, size=(64, 48), progress=False)
    run_pseudomasks(tmp_path / "data", tmp_path / "shards", progress=False)
    confidence = {}
    for path in find_shards(tmp_path / "shards"):
        with ShardReader(path) as shard:
            usable = shard.column("no_lesion") == 0
            confidence.update({i: float(c) for i, c, ok in zip(shard.ids, shard.confidence(), usable) if ok})
    values = sorted(confidence.values())
    assert len(values) >= 6 and values[0] < values[-1]
    floor = values[len(values) // 2]  # about half of them fall below it
    everything = ft._PseudoPool(tmp_path / "shards", set(), seed=0)
    kept = ft._PseudoPool(tmp_path / "shards", set(), seed=0, min_confidence=floor)
    assert len(everything.valid) == len(values)
    assert len(kept.valid) == sum(c >= floor for c in values) < len(values)
    assert min(confidence[kept.dataset.ids[int(i)]] for i in kept.valid) >= floor
    with pytest.raises(ValueError, match="pseudo_min_confidence"):
        ft.FinetuneConfig(pseudo_min_confidence=1.5)


class _Pointwise(torch.nn.Module):
    """Logits from each pixel alone (equivariant to every flip and turn), plus an optional fixed ramp (not)."""

    def __init__(self, ramp: float = 0.0):
        super().__init__()
        self.ramp = ramp

    def forward(self, x):
        w = x.shape[-1]
        return x[:, :1] * 2.0 + self.ramp * torch.linspace(-1, 1, w).view(1, 1, 1, w)


def test_tta_maps_each_view_back_before_averaging():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=g)
    plain = ft.predict_probability(_Pointwise(), images, size=24, device=torch.device("cpu"))
    tta = ft.predict_probability(_Pointwise(), images, size=24, device=torch.device("cpu"), tta=True)
    # an equivariant model gives the same map only if every view was mapped back correctly
    assert torch.allclose(torch.from_numpy(plain), torch.from_numpy(tta), atol=1e-6)
    ramp = ft.predict_probability(_Pointwise(ramp=3.0), images, size=24, device=torch.device("cpu"), tta=True)
    assert not torch.allclose(torch.from_numpy(ramp), torch.from_numpy(
        ft.predict_probability(_Pointwise(ramp=3.0), images, size=24, device=torch.device("cpu"))), atol=1e-3)
