"""Checks specific to one flow or layer."""

import pytest
import torch
import torch.nn.functional as F

from models import NVPNet, PiecewiseLinearFlow, RealNVP
from models.coupling import AffineCoupling, channel_mask, checkerboard_mask
from models.nvpnet import alternating_random_masks


def test_piecewise_analytic_derivative_matches_autograd_of_the_sum() -> None:
    # The founding material's construction: f acts elementwise, so grad of f(x1)+…+f(xN) is (f'(x1), …, f'(xN)).
    flow = PiecewiseLinearFlow(num_bins=10, xmin=-2.0, xmax=2.0).double()
    with torch.no_grad():
        flow.transform.xi.copy_(torch.randn(11, dtype=torch.float64))
    x = torch.linspace(-3.0, 3.0, 301, dtype=torch.float64).view(-1, 1).requires_grad_(True)
    y, log_det = flow.encode(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_det, torch.log(grad.view(-1)))


def test_piecewise_is_increasing_continuous_with_linear_tails() -> None:
    flow = PiecewiseLinearFlow(num_bins=6, xmin=0.0, xmax=3.0).double()
    with torch.no_grad():
        flow.transform.xi.copy_(torch.randn(7, dtype=torch.float64))
    x = torch.linspace(-50.0, 50.0, 20001, dtype=torch.float64).view(-1, 1)
    y, log_det = flow.encode(x)
    assert (y[1:] > y[:-1]).all()
    assert torch.isfinite(log_det).all() and torch.isfinite(flow.log_prob(x)).all()
    knots = torch.linspace(0.0, 3.0, 7, dtype=torch.float64).view(-1, 1)
    eps = 1e-9
    torch.testing.assert_close(flow.encode(knots - eps)[0], flow.encode(knots + eps)[0], atol=1e-7, rtol=0)
    torch.testing.assert_close(flow.encode(knots)[0].view(-1), flow.transform.knot_values())


def test_nvpnet_masks_alternate_halves_and_are_buffers() -> None:
    masks = alternating_random_masks(dim=6, depth=4, seed=5)
    for first, second in zip(masks[::2], masks[1::2], strict=True):
        assert first.sum() == 3
        torch.testing.assert_close(first + second, torch.ones(6))
    flow = NVPNet(dim=6, hidden_dim=8, depth=4, mask_seed=5)
    buffers = dict(flow.named_buffers())
    assert len([k for k in buffers if k.endswith("mask")]) == 4
    torch.testing.assert_close(buffers["transform.transforms.0.mask"], masks[0])


def test_couplings_start_as_the_identity() -> None:
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1).eval()
    seen = []

    def check_identity(module: torch.nn.Module, inputs: tuple, outputs: tuple) -> None:
        torch.testing.assert_close(outputs[0], inputs[0], atol=0, rtol=0)
        torch.testing.assert_close(outputs[1], torch.zeros(2), atol=0, rtol=0)
        seen.append(module)

    for module in flow.modules():
        if isinstance(module, AffineCoupling):
            module.register_forward_hook(check_identity)
    flow.encode(torch.randint(0, 256, (2, 1, 8, 8)).float() + 0.5)
    assert len(seen) == 3 + 3 + 4


def test_channel_mask_is_not_redundant_with_the_checkerboard() -> None:
    # Pull the channel-wise mask back through the squeeze: on the full-resolution grid it must mix both
    # checkerboard colours, otherwise the channel-wise couplings would repeat the checkerboard ones.
    for channels in (1, 3):
        mask = channel_mask(4 * channels, first_half=True).expand(1, 4 * channels, 4, 4)
        pulled_back = F.pixel_shuffle(mask, 2)[0]  # (C, 8, 8)
        board = checkerboard_mask(8, 8, 0)[0, 0]
        for c in range(channels):
            assert not torch.equal(pulled_back[c], board)
            assert not torch.equal(pulled_back[c], 1 - board)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_realnvp_supports_common_image_sizes(channels: int, size: int) -> None:
    flow = RealNVP(in_channels=channels, image_size=size, num_scales=2, mid_channels=2, num_blocks=1).eval()
    x = torch.randint(0, 256, (2, channels, size, size)).float()
    z, _ = flow.encode(x)
    assert z.shape == (2, channels * size * size)
    assert torch.isfinite(flow.log_prob(x)).all()


@pytest.mark.parametrize(("size", "scales"), [(28, 4), (30, 3), (10, 3), (8, 4)])
def test_realnvp_refuses_sizes_it_cannot_squeeze(size: int, scales: int) -> None:
    with pytest.raises(ValueError, match=rf"image_size must be a multiple .* got image_size={size}"):
        RealNVP(in_channels=1, image_size=size, num_scales=scales, mid_channels=2, num_blocks=1)


def test_realnvp_width_doubles_per_scale() -> None:
    flow = RealNVP(in_channels=1, image_size=8, num_scales=3, mid_channels=4, num_blocks=1)
    widths = [level.transforms[0].net.in_conv.weight.shape[0] for level in flow.transform.transforms[1].levels]
    assert widths == [4, 8, 16]


def test_trained_size_realnvp_float32_round_trip_within_a_thousandth_of_a_pixel() -> None:
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=28, num_scales=2, mid_channels=64, num_blocks=8)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
    flow.eval()
    x = torch.randint(0, 256, (4, 1, 28, 28)).float() + torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        error = (flow.decode(flow.encode(x)[0]) - x).abs().max().item()
    assert error <= 1e-3


def test_training_mode_dequantizes_with_noise_and_eval_is_deterministic() -> None:
    flow = RealNVP(in_channels=1, image_size=4, num_scales=1, mid_channels=2, num_blocks=1)
    x = torch.randint(0, 256, (3, 1, 4, 4)).float()
    flow.eval()
    torch.testing.assert_close(flow.log_prob(x), flow.log_prob(x), atol=0, rtol=0)
    noise = torch.rand_like(x)
    torch.testing.assert_close(flow.log_prob(x, noise), flow.log_prob(x + noise - 0.5))
    flow.train()
    assert not torch.equal(flow.log_prob(x), flow.log_prob(x))


def test_output_convolutions_learn_from_the_first_step() -> None:
    """Zero-initialised, yet every s/t output convolution gets a gradient at once (a weight-norm g = 0 gave none)."""
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1).train()
    (-flow.log_prob(torch.randint(0, 256, (4, 1, 8, 8)).float()).mean()).backward()
    weights = flow.l2_penalized_weights()
    assert len(weights) == 3 + 3 + 4
    assert all(w.abs().max() == 0 and w.grad.abs().max() > 0 for w in weights)


def test_a_weight_normed_output_convolution_of_an_older_checkpoint_loads_exactly() -> None:
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1).eval()
    old_state = {}
    for key, value in flow.state_dict().items():
        if key.endswith("out_conv.weight"):
            v = torch.randn_like(value)  # what a weight-normed layer stored: direction v and per-channel scale g
            g = torch.rand(value.shape[0], 1, 1, 1) + 0.5
            old_state[key + "_v"], old_state[key + "_g"] = v, g
        else:
            old_state[key] = value
    restored = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1).eval()
    restored.load_state_dict(old_state)  # strict: no key left over or missing
    for key, weight in restored.state_dict().items():
        if key.endswith("out_conv.weight"):
            v, g = old_state[key + "_v"], old_state[key + "_g"]
            expected = g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            torch.testing.assert_close(weight, expected, atol=0, rtol=0)
