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
from trainer.unet_pseudo import UNetPseudoConfig, train_unet_on_pseudomasks


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
