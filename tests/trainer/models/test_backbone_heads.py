"""Backbone creation and weight loading, token access, DINOHead and SegDecoder (tiny ViT, small crops)."""
from __future__ import annotations

import pytest
import torch

from trainer.engine.checkpoint import save_checkpoint
from trainer.models.backbone import (
    create_backbone,
    forward_tokens,
    load_weights,
    patch_grid,
    patch_size,
    patch_tokens,
)
from trainer.models.decoders import SegDecoder
from trainer.models.dino_head import DINOHead

ARCH = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone(ARCH, img_size=64, drop_path_rate=0.0).eval()


def test_global_and_local_crops_through_one_model(vit):
    d = vit.embed_dim
    assert patch_size(vit) == 16 and vit.num_prefix_tokens == 1
    for size in (64, 32, 48):
        x = torch.randn(2, 3, size, size)
        cls, patches = forward_tokens(vit, x)
        gh, gw = patch_grid(vit, size)
        assert cls.shape == (2, d) and patches.shape == (2, gh * gw, d) and gh == size // 16
        torch.testing.assert_close(patch_tokens(vit, x), patches)
        torch.testing.assert_close(cls, vit.forward_features(x)[:, 0])
    assert patch_grid(vit, (64, 32)) == (4, 2)


def test_unknown_arch_lists_similar_names():
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224") as err:
        create_backbone("vit_tiny_patch16_22")
    assert "arch" in str(err.value)
    with pytest.raises(ValueError, match="arch"):
        create_backbone("not_a_model_at_all_xyz")


def test_load_weights_round_trip_with_prefixes_and_head(vit, tmp_path):
    other = create_backbone(ARCH, img_size=64, drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(other.forward_features(x), vit.forward_features(x))
    # a DINO-style checkpoint: {'teacher': {'backbone.*', 'head.*'}} plus a DDP 'student'
    sd = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    sd["head.mlp.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "dino.pth"
    torch.save({"teacher": sd, "student": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    report = load_weights(other, path)
    assert report.n_loaded == len(vit.state_dict()) and report.source_key == "teacher"
    assert report.ignored == ("head.mlp.0.weight",) and "head.mlp.0.weight" in str(report)
    torch.testing.assert_close(other.forward_features(x), vit.forward_features(x))
    # the project's own export, through create_backbone(weights=...)
    save_checkpoint(tmp_path / "export.pt", {"model": vit.state_dict(), "meta": {"arch": ARCH}})
    third = create_backbone(ARCH, img_size=64, drop_path_rate=0.0, weights=tmp_path / "export.pt").eval()
    torch.testing.assert_close(third.forward_features(x), vit.forward_features(x))


def test_load_weights_resizes_position_embeddings(vit, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in vit.state_dict().items()}, path)  # 4x4 grid
    bigger = create_backbone(ARCH, img_size=96, drop_path_rate=0.0)  # 6x6 grid
    report = load_weights(bigger, path)
    assert report.n_loaded == len(bigger.state_dict()) and bigger.pos_embed.shape[1] == 1 + 36
    torch.testing.assert_close(bigger.cls_token, vit.cls_token)


def test_load_weights_is_strict_and_names_keys(vit, tmp_path):
    sd = dict(vit.state_dict())
    del sd["blocks.0.attn.qkv.weight"]
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing: blocks\.0\.attn\.qkv\.weight") as err:
        load_weights(vit, path)
    assert "unexpected: blocks.0.extra.weight" in str(err.value)
    # another architecture entirely: shape mismatches are named
    small = create_backbone("vit_small_patch16_224", img_size=32, depth=12, drop_path_rate=0.0)
    torch.save(vit.state_dict(), path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(small, path)
    with pytest.raises(FileNotFoundError):
        load_weights(vit, tmp_path / "nope.pth")


def test_dino_head_shapes_and_weight_norm():
    head = DINOHead(192, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    out = head(torch.randn(5, 192))
    assert out.shape == (5, 64)
    g = head.last_layer.parametrizations.weight.original0
    assert g.shape == (64, 1) and torch.all(g == 1) and not g.requires_grad
    # with g = 1 every row of the effective weight has unit norm, so |output| <= 1 (input is L2-normalised)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(64))
    assert out.abs().max() <= 1 + 1e-5
    trainable = DINOHead(192, out_dim=64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=False)
    assert trainable.last_layer.parametrizations.weight.original0.requires_grad
    assert isinstance(DINOHead(8, 4, nlayers=1).mlp, torch.nn.Linear)


@pytest.mark.parametrize("size,patch", [((64, 64), 16), ((48, 32), 16), ((56, 56), 14)])
def test_seg_decoder_output_at_crop_size(size, patch):
    dec = SegDecoder(embed_dim=24, patch_size=patch, hidden=32)
    n = (size[0] // patch) * (size[1] // patch)
    logits = dec(torch.randn(2, n, 24), size)
    assert logits.shape == (2, 1, *size)
    logits.mean().backward()
    assert all(p.grad is not None for p in dec.parameters())
    with pytest.raises(ValueError, match="grid"):
        dec(torch.randn(2, n + 1, 24), size)


def test_decoder_on_backbone_tokens_is_light(vit):
    dec = SegDecoder(vit.embed_dim, patch_size(vit))
    x = torch.randn(2, 3, 64, 64)
    assert dec(patch_tokens(vit, x), (64, 64)).shape == (2, 1, 64, 64)
    n_dec = sum(p.numel() for p in dec.parameters())
    n_vit = sum(p.numel() for p in vit.parameters())
    assert n_dec < 0.05 * n_vit
