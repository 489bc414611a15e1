"""S^3-Net's blocks (trainer.models.decoders): I-LKA, the modulated deformable conv, the decoder made of them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.s3net_layers import ILKA, DeformConv2d
from trainer.models.decoders import DECODERS, ILKADecoder, SegDecoder, build_decoder


def _ilka_reference(m: ILKA, x: torch.Tensor) -> torch.Tensor:
    """x * A(x) recomputed with F.conv2d from the module's weights (dilation 3, 'same' padding)."""
    c = x.shape[1]
    a = F.conv2d(x, m.local.weight, m.local.bias, padding=2, groups=c)
    branches = [F.conv2d(a, conv.weight, conv.bias, padding=3 * (k - 1) // 2, dilation=3, groups=c)
                for conv, k in zip(m.branches, (3, 5, 7))]
    attention = F.conv2d(torch.cat(branches, 1), m.mix.weight, m.mix.bias)
    return x * attention


@pytest.mark.parametrize("shape", [(2, 8, 9, 9), (1, 4, 6, 11)])
def test_ilka_is_input_times_attention(shape):
    torch.manual_seed(0)
    m = ILKA(shape[1])
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, _ilka_reference(m, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(m(torch.zeros(shape)), torch.zeros(shape))  # the attention multiplies the input
    with torch.no_grad():  # a constant attention of 2: the mix outputs its bias only
        m.mix.weight.zero_()
        m.mix.bias.fill_(2.0)
    torch.testing.assert_close(m(x), 2.0 * x)


def test_ilka_rejects_bad_sizes():
    with pytest.raises(ValueError, match="channels=0"):
        ILKA(0)


def test_deform_conv_starts_as_a_plain_conv_and_offsets_move_the_samples():
    torch.manual_seed(0)
    m = DeformConv2d(3, 5, 3)
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, padding=1), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # every tap samples one pixel to the right: x offsets are the odd channels
        m.offset.bias[1:18:2] = 1.0
    shifted = m(x)
    assert (shifted - F.conv2d(x, m.weight, padding=1)).abs().max() > 0.1
    # out(y, x) = sum_ab w(a, b) in(y + a - 1, x + b): a conv without padding on the input padded (0, 2, 1, 1)
    torch.testing.assert_close(shifted, F.conv2d(F.pad(x, (0, 2, 1, 1)), m.weight), rtol=1e-5, atol=1e-5)


def test_deform_conv_modulation_scales_the_output():
    torch.manual_seed(1)
    m = DeformConv2d(2, 3, 3, bias=False)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():  # modulation logits -> 2 * sigmoid(ln 3) = 1.5
        m.offset.bias[18:] = torch.log(torch.tensor(3.0))
    torch.testing.assert_close(m(x), 1.5 * F.conv2d(x, m.weight, padding=1), rtol=1e-5, atol=1e-5)


def test_gradient_reaches_the_offset_predictor():
    torch.manual_seed(0)
    m = DeformConv2d(4, 4, 3)
    x = torch.randn(2, 4, 8, 8)
    (m(x) * torch.randn(2, 4, 8, 8)).sum().backward()
    g = m.offset.weight.grad
    assert g is not None and g[:18].abs().sum() > 0 and g[18:].abs().sum() > 0  # offsets and modulation
    assert m.weight.grad.abs().sum() > 0


def test_deform_conv_rejects_even_kernels():
    with pytest.raises(ValueError, match="kernel_size: expected an odd"):
        DeformConv2d(2, 2, 4)


@pytest.mark.parametrize("patch,size", [(16, 64), (16, 48), (14, 56), (14, 42)])
def test_ilka_decoder_shapes_and_gradient_to_every_parameter(patch, size):
    torch.manual_seed(0)
    dec = ILKADecoder(embed_dim=24, patch_size=patch, hidden=32)
    n = (size // patch) ** 2
    tokens = torch.randn(3, n, 24, requires_grad=True)
    out = dec(tokens, (size, size))
    assert out.shape == (3, 1, size, size)
    (out * torch.randn_like(out)).sum().backward()
    missing = [name for name, p in dec.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert tokens.grad.abs().sum() > 0


def test_ilka_decoder_checks_the_token_grid():
    dec = ILKADecoder(embed_dim=24, patch_size=16, hidden=16)
    with pytest.raises(ValueError, match="do not form the 4 x 4 grid"):
        dec(torch.randn(1, 15, 24), (64, 64))
    with pytest.raises(ValueError, match=r"tokens: expected \(B, N, 24\)"):
        dec(torch.randn(1, 16, 12), (64, 64))


def test_build_decoder_by_name():
    assert DECODERS == ("conv", "ilka")
    assert isinstance(build_decoder("conv", 24, 16, hidden=16), SegDecoder)
    ilka = build_decoder("ilka", 24, 16, hidden=16)
    assert isinstance(ilka, ILKADecoder) and ilka.proj[0].out_channels == 16
    with pytest.raises(ValueError, match=r"decoder: expected one of \('conv', 'ilka'\), got 'unet'"):
        build_decoder("unet", 24, 16)
