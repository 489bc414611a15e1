"""The decoders' high-resolution edge path: it changes the output, learns, and keeps every preset's crop size."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer.models.backbone import forward_tokens
from trainer.models.decoders import EdgePath, build_decoder, has_edge_path
from trainer.train.presets import pretrain_preset


def _tokens(b: int, side: int, dim: int) -> torch.Tensor:
    return torch.randn(b, side * side, dim, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["conv", "ilka"])
def test_edge_path_changes_the_output_and_receives_gradient(kind):
    torch.manual_seed(0)
    dec = build_decoder(kind, 32, 8, hidden=16, skip=True)
    assert isinstance(dec.edge, EdgePath) and has_edge_path(dec.state_dict())
    tokens = _tokens(2, 6, 32)
    image = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    logits = dec(tokens, (48, 48), image)
    assert logits.shape == (2, 1, 48, 48)
    # the pixels reach the output: another image under the same tokens gives another mask
    other = dec(tokens, (48, 48), image.flip(-1))
    assert (logits - other).abs().max() > 1e-3
    logits.square().mean().backward()
    for name in ("pix2.0.weight", "pix4.0.weight", "fuse4.0.weight", "fuse2.0.weight", "out.weight"):
        grad = dict(dec.edge.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert dec.proj[0].weight.grad.abs().sum() > 0  # the token path still learns through the fusion


@pytest.mark.parametrize("kind", ["conv", "ilka"])
def test_token_only_decoder_keeps_its_old_keys_and_needs_no_image(kind):
    dec = build_decoder(kind, 32, 16, hidden=16, skip=False)
    assert not has_edge_path(dec.state_dict()) and "out.weight" in dec.state_dict()
    assert dec(_tokens(1, 3, 32), (48, 48)).shape == (1, 1, 48, 48)
    with pytest.raises(ValueError, match="edge path"):
        build_decoder(kind, 32, 16, hidden=16, skip=True)(_tokens(1, 3, 32), (48, 48))


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_decoder_output_has_the_crop_size_for_every_preset(preset):
    config = dataclasses.replace(pretrain_preset(preset), out_dim=32, head_hidden=16, bottleneck_dim=8)
    model = config.build_model().eval()
    size = config.img_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        _, patches = forward_tokens(model.backbone, x)
        logits = model.decoder(patches, (size, size), x)
    assert logits.shape == (1, 1, size, size)
    grid = size // model.backbone.patch_embed.patch_size[0]
    assert patches.shape[1] == grid * grid
    if preset == "cpu":
        assert grid >= 12  # a token grid that can draw a border (bench/bench_grid_ceiling.py)
