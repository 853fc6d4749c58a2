"""CoordinateAttention against NumPy, the authors' PyTorch module and timm's, weights copied across."""

import numpy as np
import pytest

import keras_attention as ka
from tests.kit import reference as ref
from tests.kit.harness import run_layer_test, to_numpy
from tests.kit.models import images, user_cnn


def _w(variable):
    return np.asarray(to_numpy(variable), "float64")


def coord_reference(layer, x):
    """Hou et al. (CVPR 2021), Eq. 4-6, in NumPy: row and column means, one shared 1x1 conv + BN + act,
    a 1x1 conv and gate per direction, out = x * a_w * a_h (+ x with `residual`)."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)

    def conv(z, conv_layer):
        kernel = _w(conv_layer.kernel)[0, 0]
        out = z @ kernel
        return out + _w(conv_layer.bias) if layer.use_bias else out

    rows, columns = x.mean(axis=2), x.mean(axis=1)  # (B, H, C), (B, W, C)
    y = conv(np.concatenate([rows, columns], axis=1), layer.conv1)
    if layer.use_batchnorm:
        bn = layer.bn1
        y = ref.batchnorm_inference(
            y, _w(bn.gamma), _w(bn.beta), _w(bn.moving_mean), _w(bn.moving_variance), bn.epsilon
        )
    y = {
        "hard_swish": lambda t: t * np.clip(t + 3, 0, 6) / 6,
        "relu": lambda t: np.maximum(t, 0),
        "relu6": lambda t: np.clip(t, 0, 6),
        "swish": lambda t: t * ref.sigmoid(t),
    }[layer.activation](y)
    height = x.shape[1]
    scale = 2.0 if layer.start_as_identity else 1.0
    a_h = ref.gate(conv(y[:, :height], layer.conv_h), layer.gate, scale)[:, :, None, :]
    a_w = ref.gate(conv(y[:, height:], layer.conv_w), layer.gate, scale)[:, None, :, :]
    out = x * a_w * a_h + (x if layer.residual else 0)
    return ref.from_channels_last(out, layer.data_format)


# In training, BatchNorm subtracts the batch mean: the bias of the convolution before it gets no gradient
# (the authors' code has that bias all the same).
BIAS_BEFORE_BATCHNORM = ("conv1/bias",)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_battery_authors_form(data_format, tmp_path):
    shape = (2, 5, 7, 40) if data_format == "channels_last" else (2, 40, 5, 7)
    dynamic = (None, None, None, 40) if data_format == "channels_last" else (None, 40, None, None)
    run_layer_test(
        ka.CoordinateAttention,
        dict(data_format=data_format),
        shape,
        reference_fn=coord_reference,
        tmp_path=tmp_path,
        dynamic_input_shape=dynamic,
        frozen_ok=BIAS_BEFORE_BATCHNORM,
    )


# The argument variants are the same formula in every mode; the jit steps of JAX and PyTorch cost
# 15-100 s a configuration on 2 cores, so those modes run the authors' form only (CI time).
@pytest.mark.tensorflow_backends(reason="argument variants; JAX and PyTorch run the authors' form")
def test_battery_timm_form(tmp_path):
    run_layer_test(
        ka.CoordinateAttention,
        dict(reduction=24, divisor=8, use_bias=False, residual=True, gate="hard_sigmoid", activation="swish"),
        (2, 6, 4, 48),
        reference_fn=coord_reference,
        tmp_path=tmp_path,
    )


@pytest.mark.tensorflow_backends(reason="argument variants; JAX and PyTorch run the authors' form")
def test_battery_without_batchnorm_relu_identity_start(tmp_path):
    run_layer_test(
        ka.CoordinateAttention,
        dict(use_batchnorm=False, activation="relu", start_as_identity=True, hidden_channels=6),
        (2, 4, 4, 16),
        reference_fn=coord_reference,
        tmp_path=tmp_path,
    )


def timm_make_divisible(v, divisor=8, min_value=None, round_limit=0.9):
    """timm's `make_divisible`, written from its published definition."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < round_limit * v else new_v


@pytest.mark.run_once(reason="width arithmetic")
def test_hidden_widths_follow_both_published_rules():
    authors, timm = ka.CoordinateAttention(), ka.CoordinateAttention(reduction=24, divisor=8, use_bias=False)
    for channels in range(1, 4097):
        assert authors.hidden_width(channels) == max(8, channels // 32)  # coordatt.py: mip = max(8, inp // 32)
        # timm CoordAttn: make_divisible(channels * rd_ratio * se_factor, 8, round_limit=0.)
        assert timm.hidden_width(channels) == timm_make_divisible(channels * (1.0 / 16) * (2 / 3), 8, round_limit=0.0)
    assert authors.hidden_width(960) == 30 and timm.hidden_width(960) == 40  # control: the rules differ


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(residual=True, start_as_identity=True), "`start_as_identity=True` excludes `residual=True`"),
        (dict(hidden_channels=8, reduction=4), r"excludes `reduction`, `min_channels` and `divisor`.*reduction=4"),
        (dict(hidden_channels=0), r"`hidden_channels` must be an integer >= 1; got 0"),
        (dict(divisor=0), r"`divisor` must be an integer >= 1; got 0"),
        (dict(reduction=2.5), r"`reduction` must be an integer >= 1; got 2.5"),
        (dict(activation="gelu"), r"unknown `activation` 'gelu'; expected one of \['hard_swish'"),
        (dict(gate="tanh"), r"unknown `gate` 'tanh'"),
    ],
)
def test_bad_arguments_name_the_layer(kwargs, message):
    with pytest.raises(ValueError, match=rf"^CoordinateAttention: .*{message}"):
        ka.CoordinateAttention(**kwargs)


def test_attach_keeps_the_outputs_at_insertion():
    backbone = user_cnn()
    model = ka.attach(backbone, "coord")
    inserted = [layer for layer in model.layers if isinstance(layer, ka.CoordinateAttention)]
    assert len(inserted) == 3
    x = images(4, 32)
    expected, actual = to_numpy(backbone(x)), to_numpy(model(x))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # Control: once a gate convolution moves, the model is no longer the backbone.
    inserted[0].conv_h.kernel.assign(np.ones(inserted[0].conv_h.kernel.shape, "float32"))
    assert not np.allclose(to_numpy(model(x)), expected, atol=1e-3 * np.abs(expected).max())


# --------------------------------------------------------------- PyTorch modules from the published code


def _torch_modules():
    import torch  # in the test extra: a broken install fails here, it does not skip

    from tests.kit.reference_mobilenet_ca import CoordAtt  # the authors' block, as in their mbv2_ca.py

    nn = torch.nn

    class TimmCoordAttn(nn.Module):
        """timm 1.0.31 CoordAttn defaults: make_divisible(C/16 * 2/3, 8), no bias, BN, Hardswish, sigmoid."""

        def __init__(self, channels, has_skip=False):
            super().__init__()
            rd = timm_make_divisible(channels * (1.0 / 16) * (2 / 3), 8, round_limit=0.0)
            self.has_skip = has_skip
            self.conv1 = nn.Conv2d(channels, rd, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(rd)
            self.act = nn.Hardswish()
            self.conv_h = nn.Conv2d(rd, channels, 1, bias=False)
            self.conv_w = nn.Conv2d(rd, channels, 1, bias=False)

        def forward(self, x):
            n, c, h, w = x.size()
            x_h, x_w = x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(-1, -2)
            y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
            x_h, x_w = torch.split(y, [h, w], dim=2)
            out = x * torch.sigmoid(self.conv_w(x_w.transpose(-1, -2))) * torch.sigmoid(self.conv_h(x_h))
            return out + x if self.has_skip else out

    return torch, CoordAtt, TimmCoordAttn


def _randomise_torch(module, torch, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if "num_batches" in name:
                continue
            value = torch.randn(tensor.shape, generator=generator) * 0.5
            tensor.copy_(value.abs() + 0.5 if "running_var" in name else value)


def _copy_into(layer, module, torch_names):
    """The PyTorch state dict into the Keras layer: (out, in, 1, 1) kernels to (1, 1, in, out).
    `torch_names`: the module's names of conv1, conv_h and conv_w."""
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    for name, torch_name in zip(("conv1", "conv_h", "conv_w"), torch_names):
        conv = getattr(layer, name)
        conv.kernel.assign(state[f"{torch_name}.weight"].transpose(2, 3, 1, 0))
        if conv.use_bias:
            conv.bias.assign(state[f"{torch_name}.bias"])
    bn = layer.bn1
    for variable, key in ((bn.gamma, "weight"), (bn.beta, "bias"), (bn.moving_mean, "running_mean")):
        variable.assign(state[f"bn1.{key}"])
    bn.moving_variance.assign(state["bn1.running_var"])


@pytest.mark.run_once(reason="PyTorch reference modules, the same in every Keras mode")
@pytest.mark.parametrize("form", ["authors", "timm", "timm_skip"])
def test_equals_the_published_pytorch_modules(form):
    torch, authors, timm = _torch_modules()
    channels = 96
    module = {
        "authors": lambda: authors(channels, channels),  # coordatt.py's CoordAtt is this block, conv2/3 named conv_h/w
        "timm": lambda: timm(channels),
        "timm_skip": lambda: timm(channels, has_skip=True),
    }[form]().eval()
    _randomise_torch(module, torch, seed=1)
    kwargs = {} if form == "authors" else dict(reduction=24, divisor=8, use_bias=False, residual=form == "timm_skip")
    layer = ka.CoordinateAttention(data_format="channels_first", **kwargs)
    x = np.random.default_rng(2).normal(size=(2, channels, 9, 6)).astype("float32")
    layer(x)
    _copy_into(layer, module, ("conv1", "conv2", "conv3") if form == "authors" else ("conv1", "conv_h", "conv_w"))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(to_numpy(layer(x, training=False)), expected, rtol=1e-4, atol=1e-5)
    # Control: the transposed strips (conv_h and conv_w swapped) give another function.
    layer.conv_h.kernel.assign(to_numpy(layer.conv_w.kernel) + 0.1)
    assert not np.allclose(to_numpy(layer(x, training=False)), expected, atol=1e-3)
