"""EffectiveSqueezeExcitation and CircularEfficientChannelAttention against NumPy and timm's PyTorch modules."""

import numpy as np
import pytest

import keras_attention as ka
from tests.kit import reference as ref
from tests.kit.harness import run_layer_test, to_numpy
from tests.kit.models import images, user_cnn


def _w(variable):
    return np.asarray(to_numpy(variable), "float64")


def ese_reference(layer, x):
    """Lee & Park (CenterMask), eSE: x * hard_sigmoid(W avgpool(x) + b), one C -> C projection."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    logits = x.mean(axis=(1, 2)) @ _w(layer.fc.kernel)[0, 0]
    if layer.use_bias:
        logits = logits + _w(layer.fc.bias)
    gate = ref.gate(logits, layer.gate, 2.0 if layer.start_as_identity else 1.0)
    return ref.from_channels_last(x * gate[:, None, None, :], layer.data_format)


def ceca_reference(layer, x):
    """ECA whose 1-D convolution across channels pads circularly (timm's CecaModule)."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    pooled = x.mean(axis=(1, 2))  # (B, C)
    kernel = _w(layer.conv.kernel)[0, :, 0, 0]  # (k,)
    k, channels = len(kernel), pooled.shape[1]
    logits = np.stack(
        [sum(kernel[j] * pooled[:, (c + j - k // 2) % channels] for j in range(k)) for c in range(channels)], -1
    )
    gate = ref.gate(logits, layer.gate, 2.0 if layer.start_as_identity else 1.0)
    return ref.from_channels_last(x * gate[:, None, None, :], layer.data_format)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery_ese(data_format, tmp_path):
    shape = (2, 5, 6, 24) if data_format == "channels_last" else (2, 24, 5, 6)
    kwargs = dict(data_format=data_format)
    run_layer_test(ka.EffectiveSqueezeExcitation, kwargs, shape, reference_fn=ese_reference, tmp_path=tmp_path)


@pytest.mark.tensorflow_backends(reason="argument variants; JAX and PyTorch run one configuration (CI time)")
def test_battery_ese_sigmoid_identity_no_bias(tmp_path):
    run_layer_test(
        ka.EffectiveSqueezeExcitation,
        dict(gate="sigmoid", start_as_identity=True, use_bias=False),
        (2, 4, 4, 16),
        reference_fn=ese_reference,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery_ceca(data_format, tmp_path):
    shape = (2, 5, 6, 24) if data_format == "channels_last" else (2, 24, 5, 6)
    run_layer_test(
        ka.CircularEfficientChannelAttention,
        dict(kernel_size=5, data_format=data_format),
        shape,
        reference_fn=ceca_reference,
        tmp_path=tmp_path,
    )


def test_circular_padding_differs_from_eca_only_at_the_ends():
    """Control: with the same kernel, ceca and eca agree on inner channels and differ on the first and last."""
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 32)).astype("float32")
    ceca, eca = ka.CircularEfficientChannelAttention(kernel_size=5), ka.EfficientChannelAttention(kernel_size=5)
    ceca(x), eca(x)
    kernel = np.random.default_rng(1).normal(size=tuple(eca.conv.kernel.shape)).astype("float32")
    ceca.conv.kernel.assign(kernel)
    eca.conv.kernel.assign(kernel)
    a, b = to_numpy(ceca(x)), to_numpy(eca(x))
    np.testing.assert_allclose(a[..., 2:-2], b[..., 2:-2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[..., :2], b[..., :2], atol=1e-4) and not np.allclose(a[..., -2:], b[..., -2:], atol=1e-4)


@pytest.mark.parametrize("name", ["ese", "ceca"])
def test_attach_keeps_the_outputs_at_insertion(name):
    backbone = user_cnn()
    model = ka.attach(backbone, name)
    assert sum(type(layer) is ka.layers.ATTENTIONS[name] for layer in model.layers) == 3
    x = images(4, 32)
    expected = to_numpy(backbone(x))
    np.testing.assert_allclose(to_numpy(model(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# --------------------------------------------------------------- timm's PyTorch modules, from its code


@pytest.mark.run_once(reason="PyTorch reference modules, the same in every Keras mode")
@pytest.mark.parametrize("name", ["ese", "ceca"])
def test_equals_timms_pytorch_modules(name):
    import torch  # in the test extra: a broken install fails here, it does not skip

    nn = torch.nn

    class EffectiveSEModule(nn.Module):  # timm/layers/squeeze_excite.py (add_maxpool=False)
        def __init__(self, channels):
            super().__init__()
            self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0)

        def forward(self, x):
            return x * nn.functional.hardsigmoid(self.fc(x.mean((2, 3), keepdim=True)))

    class CecaModule(nn.Module):  # timm/layers/eca.py: manual circular padding, Conv1d without bias
        def __init__(self, kernel_size):
            super().__init__()
            self.padding = (kernel_size - 1) // 2
            self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=0, bias=False)

        def forward(self, x):
            y = x.mean((2, 3)).view(x.shape[0], 1, -1)
            y = self.conv(nn.functional.pad(y, (self.padding, self.padding), mode="circular"))
            return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)

    channels = 64
    x = np.random.default_rng(2).normal(size=(2, channels, 5, 7)).astype("float32")
    torch.manual_seed(0)
    if name == "ese":
        module, layer = EffectiveSEModule(channels).eval(), ka.EffectiveSqueezeExcitation(data_format="channels_first")
        layer(x)
        layer.fc.kernel.assign(module.fc.weight.detach().numpy().transpose(2, 3, 1, 0))
        layer.fc.bias.assign(module.fc.bias.detach().numpy())
    else:
        layer = ka.CircularEfficientChannelAttention(data_format="channels_first")
        layer(x)
        module = CecaModule(layer.resolved_kernel_size).eval()  # 3 for 64 channels, timm's rule and ours
        layer.conv.kernel.assign(module.conv.weight.detach().numpy().reshape(1, -1, 1, 1))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)
