"""One parametrized suite over every flow (as zuko's tests/test_flows.py)."""

import io
import math

import pytest
import torch
from torch import nn

from models import Flow, bits_per_dim, standard_normal_log_prob
from models.export import script, to_torchscript
from models.registry import FLOWS as REGISTRY
from models.registry import example_flows

# Every example of every flow in the one list of flows (models/registry.py): a new flow is tested by adding it.
FLOWS = example_flows()


def randomize(flow: Flow, seed: int = 0) -> Flow:
    """Move every parameter and batch-norm statistic off its initial value, so no layer is the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for m in flow.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return flow


def make(name: str, dtype: torch.dtype = torch.float64) -> Flow:
    torch.manual_seed(0)
    return randomize(FLOWS[name]()).to(dtype).eval()


def data(flow: Flow, batch: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if flow.is_image:
        return torch.randint(0, 256, (batch, *flow.event_shape), generator=gen).to(dtype)
    return 2.0 * torch.randn(batch, *flow.event_shape, generator=gen, dtype=dtype)


@pytest.fixture(params=sorted(FLOWS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_shapes(name: str) -> None:
    flow = make(name)
    x = data(flow, 3)
    z, log_det = flow.encode(x)
    assert z.shape == (3, flow.dim)
    assert log_det.shape == (3,)
    assert flow.log_prob(x).shape == (3,)
    assert flow.decode(z).shape == x.shape


def test_round_trip(name: str) -> None:
    flow = make(name)
    x = data(flow, 4) + (0.5 if flow.is_image else 0.0)
    z, _ = flow.encode(x)
    torch.testing.assert_close(flow.decode(z), x, atol=1e-8, rtol=1e-8)
    z2 = torch.randn(4, flow.dim, dtype=torch.float64)
    torch.testing.assert_close(flow.encode(flow.decode(z2))[0], z2, atol=1e-8, rtol=1e-8)


def test_log_det_matches_autograd_jacobian(name: str) -> None:
    flow = make(name)
    x = data(flow, 2) + (0.5 if flow.is_image else 0.0)
    _, log_det = flow.encode(x)
    for i in range(x.shape[0]):

        def encode_flat(row: torch.Tensor) -> torch.Tensor:
            return flow.encode(row.view(1, *flow.event_shape))[0].view(-1)

        jac = torch.autograd.functional.jacobian(encode_flat, x[i].reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign.abs().item() == 1.0
        torch.testing.assert_close(log_det[i], logabsdet, atol=1e-8, rtol=1e-8)


def test_log_prob_is_base_plus_log_det(name: str) -> None:
    flow = make(name)
    x = data(flow, 3)
    offset = 0.5 if flow.is_image else 0.0  # eval-mode dequantization: the bin centre
    z, log_det = flow.encode(x + offset)
    expected = -0.5 * (z**2).sum(1) - 0.5 * flow.dim * math.log(2 * math.pi) + log_det
    torch.testing.assert_close(flow.log_prob(x), expected)
    torch.testing.assert_close(standard_normal_log_prob(z) + log_det, expected)


def test_every_parameter_gets_a_gradient(name: str) -> None:
    flow = make(name).train()
    x = data(flow, 64) if flow.dim > 1 else torch.linspace(-3.5, 3.5, 200, dtype=torch.float64).view(-1, 1)
    (-flow.log_prob(x).mean()).backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_no_nan_or_inf(name: str) -> None:
    flow = make(name, torch.float32)
    z = 1.5 * torch.randn(64, flow.dim)
    x = flow.decode(z)
    assert torch.isfinite(x).all()
    if flow.is_image:
        extremes = torch.stack([torch.zeros(flow.event_shape), torch.full(flow.event_shape, 255.0)])
        assert torch.isfinite(flow.log_prob(extremes)).all()
    assert torch.isfinite(flow.log_prob(data(flow, 16, torch.float32))).all()


def test_wrong_shape_raises_value_error(name: str) -> None:
    flow = make(name)
    with pytest.raises(ValueError, match=r"expected data of shape .* got \[3, 7\]"):
        flow.encode(torch.zeros(3, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected latents of shape .* got \[2, 3, 1\]"):
        flow.decode(torch.zeros(2, 3, 1, dtype=torch.float64))


def test_eval_rows_are_independent(name: str) -> None:
    flow = make(name, torch.float32)
    x = data(flow, 16, torch.float32)
    batch_lp = flow.log_prob(x)
    batch_z, _ = flow.encode(x)
    for i in (0, 7, 15):
        torch.testing.assert_close(flow.log_prob(x[i : i + 1])[0], batch_lp[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(flow.encode(x[i : i + 1])[0][0], batch_z[i], atol=1e-5, rtol=1e-5)


def test_torchscript_matches_eager_and_survives_save_load(name: str) -> None:
    flow = make(name, torch.float32)
    x = data(flow, 5, torch.float32)
    z = torch.randn(5, flow.dim)
    buffer = io.BytesIO()
    torch.jit.save(to_torchscript(flow), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode(x)[0], flow.encode(x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.encode(x)[1], flow.encode(x)[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.decode(z), flow.decode(z), atol=1e-4, rtol=1e-5)
    # The unfrozen script of the flow itself also matches (training-mode modules stay scriptable).
    torch.testing.assert_close(script(flow).log_prob(x), flow.log_prob(x), atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_and_temperature_scales_z(name: str) -> None:
    flow = make(name, torch.float32)
    a = flow.sample(6, temperature=0.7, generator=torch.Generator().manual_seed(3))
    b = flow.sample(6, temperature=0.7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    z = 0.7 * torch.randn(6, flow.dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(flow.encode(a)[0], z, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(2, temperature=0.0)


def test_state_dict_round_trip_restores_the_same_flow(name: str) -> None:
    flow = make(name)
    torch.manual_seed(123)  # a different seed: anything drawn at construction would differ
    fresh = FLOWS[name]().to(torch.float64).eval()
    fresh.load_state_dict(flow.state_dict())
    x = data(flow, 4)
    torch.testing.assert_close(fresh.log_prob(x), flow.log_prob(x), atol=0, rtol=0)


def test_every_flow_class_is_registered_with_an_example() -> None:
    import models

    flow_classes = {cls for cls in vars(models).values() if isinstance(cls, type) and issubclass(cls, Flow)} - {Flow}
    assert flow_classes == {spec.cls for spec in REGISTRY.values()}
    assert all(spec.examples for spec in REGISTRY.values())
    for name, spec in REGISTRY.items():
        assert spec.cls.__name__ == name


def test_bits_per_dim_is_the_negative_log_likelihood_in_bits_per_dimension() -> None:
    # A density uniform over the 8-bit cube [0, 256)^D has log p = -8 D ln 2: 8 bits per dimension.
    uniform = torch.tensor([-8 * 64 * math.log(2.0), 0.0, 64 * math.log(2.0)], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(uniform, 64), torch.tensor([8.0, 0.0, -1.0], dtype=torch.float64))
    # On a flow, as in the README: (B,) nats -> (B,) bits/dim, lower for likelier items.
    flow = make("RealNVP-1x8x8")
    log_p = flow.log_prob(data(flow, 4))
    bpd = bits_per_dim(log_p, flow.dim)
    assert bpd.shape == (4,) and bpd.dtype == log_p.dtype
    torch.testing.assert_close(bpd * flow.dim * math.log(2.0), -log_p)
    assert torch.equal(torch.argsort(bpd), torch.argsort(-log_p))
