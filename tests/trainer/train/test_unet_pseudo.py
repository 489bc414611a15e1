"""The unet-pseudo baseline: a U-Net learns the pseudo-masks, is saved as model.pt and fine-tunes from it."""
from __future__ import annotations

import json

import numpy as np
import torch
from test_pretrain import shards  # noqa: F401  (the tiny shard fixture: a dark disc on skin, its pseudo-mask)

from trainer.data.normalise import normalise
from trainer.data.shard_dataset import ShardDataset
from trainer.models.segmenter import build_seg_model, load_seg_model
from trainer.models.unet import UNet
from trainer.train.unet_pseudo import UNetPseudoConfig, train_unet_on_pseudomasks


def test_unet_shapes_and_gradient():
    model = UNet((4, 8, 16))
    x = torch.randn(2, 3, 40, 52, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 1, 40, 52)
    y.mean().backward()
    assert x.grad.abs().sum() > 0 and model.backbone.levels[0][0].weight.grad.abs().sum() > 0


def test_unet_learns_the_pseudo_masks_and_round_trips(shards, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    config = UNetPseudoConfig(img_size=32, channels=(8, 16, 32), steps=80, batch_size=4, lr=5e-3)
    path = train_unet_on_pseudomasks(shards, tmp_path / "unet", config, exclude_ids={"S000"}, device="cpu",
                                     progress=False)
    assert path.name == "model.pt"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "unet" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    model, info = load_seg_model(path)
    assert isinstance(model, UNet) and info["arch"] == "unet" and info["img_size"] == 32
    ds = ShardDataset(shards)
    jac = []
    for i in range(len(ds)):
        item = ds[i]
        if item["valid"] == 0:
            continue
        with torch.no_grad():
            pred = model(normalise(item["image"][None], 32))[0, 0].numpy() > 0
        truth = torch.nn.functional.interpolate(item["maps"][None, :1].float(), size=(32, 32))[0, 0].numpy() > 127
        jac.append((pred & truth).sum() / max((pred | truth).sum(), 1))
    assert np.mean(jac) > 0.7  # the disc is found (a constant or a random net scores far lower)
    # the fine-tuning start point: the same weights, in training mode, the U-Net's parameter groups
    seg, meta = build_seg_model("pretrain", checkpoint=path)
    assert isinstance(seg, UNet) and seg.training and meta["decoder_arch"] == "unet"
    for k, v in model.state_dict().items():
        assert torch.equal(v, seg.state_dict()[k]), k


def test_table_trains_the_unet_once_scores_it_with_0_labels_and_fine_tunes_from_it(shards, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    import trainer.table as table
    from pipeline.synth import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 12, seed=3, size=(64, 48), progress=False)
    monkeypatch.setattr(table, "unet_pseudo_preset",
                        lambda name, img_size: UNetPseudoConfig(img_size=32, channels=(4, 8), steps=3, batch_size=2))
    calls = []

    def fake_finetune(data, frac, cell, *, checkpoint, config, **kwargs):
        calls.append((cell.name, checkpoint, config.init))
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "metrics.json").write_text(json.dumps({"n_labelled": 2, "mean": {"jaccard": 0.5,
                                                                               "thresholded_jaccard": 0.0}}))

    monkeypatch.setattr("trainer.train.finetune.finetune", fake_finetune)
    spec = table.TableSpec(data=(str(data),), out=str(tmp_path / "table"), fracs=(0.2,), seeds=(0,),
                           methods=("unet-pseudo",), preset="cpu", device="cpu", shards=str(shards))
    table.run_table(spec, progress=False)
    model_pt = tmp_path / "table" / "pretrain-unet-pseudo" / "model.pt"
    assert calls == [("unet-pseudo-frac0.2-seed0", model_pt, "pretrain")]
    rows = table.read_results(tmp_path / "table" / "results.csv")
    assert sorted((r["method"], r["frac"], r["n_labelled"]) for r in rows) == [("unet-pseudo", "0.0", "0"),
                                                                               ("unet-pseudo", "0.2", "2")]
