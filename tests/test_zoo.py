"""The rest of timm's CNN attentions (scoord, ela, strip, ecam, lcbam, ge, gc, gca) against NumPy and PyTorch.

Each layer has an independent NumPy reference of its formula (written from
timm's code and the papers, channels_last, float64), goes through the layer
harness, equals a PyTorch module written here from timm's published code with
the weights copied across, and attaches into a model as the identity.
"""

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.layers.quantizers import kernel_of
from tests.kit import reference as ref
from tests.kit.harness import run_layer_test, to_numpy
from tests.kit.models import images, user_cnn

ACTIVATION = {
    "swish": lambda t: t * ref.sigmoid(t),
    "linear": lambda t: t,
    "relu": lambda t: np.maximum(t, 0),
    "relu6": lambda t: np.clip(t, 0, 6),
    "hard_swish": lambda t: t * np.clip(t + 3, 0, 6) / 6,
}


def _w(variable):
    return np.asarray(to_numpy(variable), "float64")


def _dense(z, conv, use_bias=True):
    """A 1x1 convolution on the last axis."""
    out = z @ _w(conv.kernel)[0, 0]
    return out + _w(conv.bias) if use_bias and conv.use_bias else out


def _conv1d_same(z, conv):
    """A depthwise (k, 1) 'same' convolution of (B, L, C) along L, as a 1-D convolution."""
    kernel = _w(kernel_of(conv))[:, 0, :, 0]  # (k, C)
    k, length = len(kernel), z.shape[1]
    padded = np.pad(z, ((0, 0), (k // 2, k // 2), (0, 0)))
    out = sum(kernel[j] * padded[:, j : j + length] for j in range(k))
    return out + _w(conv.bias) if conv.use_bias else out


def _group_norm(z, gamma, beta, groups, eps):
    """PyTorch's GroupNorm on the (B, C, L) view of z (B, L, C)."""
    b, length, c = z.shape
    g = z.reshape(b, length, groups, c // groups)
    mu, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(b, length, c) * gamma + beta


def _scale(layer):
    return 2.0 if layer.start_as_identity else 1.0


def _strip_layer_io(layer, x):
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    return x, x.mean(axis=2), x.mean(axis=1)  # x, rows (B, H, C), columns (B, W, C)


def scoord_reference(layer, x):
    """timm SimpleCoordAttn: x * gate(W_h act(W_1 mean_W x) + W_w act(W_1 mean_H x)) (+ x)."""
    x, rows, columns = _strip_layer_io(layer, x)
    act = ACTIVATION[layer.activation]
    a_h = _dense(act(_dense(rows, layer.conv1)), layer.conv_h)
    a_w = _dense(act(_dense(columns, layer.conv1)), layer.conv_w)
    out = x * ref.gate(a_h[:, :, None, :] + a_w[:, None, :, :], layer.gate, _scale(layer))
    return ref.from_channels_last(out + (x if layer.residual else 0), layer.data_format)


def ela_reference(layer, x):
    """ELA: x * gate(act(GN(dwconv_h(mean_W x)))) * gate(act(GN(dwconv_w(mean_H x)))) (+ x)."""
    x, rows, columns = _strip_layer_io(layer, x)
    gates = []
    for axis, strip in (("h", rows), ("w", columns)):
        own = "h" if layer.shared else axis
        y = _conv1d_same(strip, getattr(layer, f"conv_{own}"))
        if layer.use_norm:
            gamma, beta = _w(getattr(layer, f"norm_{own}_gamma")), _w(getattr(layer, f"norm_{own}_beta"))
            y = _group_norm(y, gamma, beta, layer.norm_groups, 1e-5)
        gates.append(ref.gate(ACTIVATION[layer.activation](y), layer.gate, _scale(layer)))
    out = x * gates[0][:, :, None, :] * gates[1][:, None, :, :]
    return ref.from_channels_last(out + (x if layer.residual else 0), layer.data_format)


def strip_reference(layer, x):
    """timm StripAttn: x * gate(dwconv_h(mean_W x) + dwconv_w(mean_H x)) (+ x)."""
    x, rows, columns = _strip_layer_io(layer, x)
    if layer.use_conv:
        rows, columns = _conv1d_same(rows, layer.conv_h), _conv1d_same(columns, layer.conv_w)
    out = x * ref.gate(rows[:, :, None, :] + columns[:, None, :, :], layer.gate, _scale(layer))
    return ref.from_channels_last(out + (x if layer.residual else 0), layer.data_format)


def ecam_reference(layer, x):
    """timm EcaModule(use_mlp=True): the pooled channels as a 1-D signal, conv1x1 1 -> r, act, conv_k r -> 1."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    pooled = x.mean(axis=(1, 2))  # (B, C)
    hidden = ACTIVATION[layer.activation](pooled[..., None] * _w(layer.conv.kernel)[0, 0, 0] + _w(layer.conv.bias))
    kernel = _w(layer.conv2.kernel)[0]  # (k, r, 1)
    k, channels = kernel.shape[0], pooled.shape[1]
    padded = np.pad(hidden, ((0, 0), (k // 2, k // 2), (0, 0)))
    logits = sum(padded[:, j : j + channels] @ kernel[j] for j in range(k))[..., 0] + _w(layer.conv2.bias)
    out = x * ref.gate(logits, layer.gate, _scale(layer))[:, None, None, :]
    return ref.from_channels_last(out, layer.data_format)


def lcbam_reference(layer, x):
    """timm LightCbamModule: channel gate of (avg + max) / 2, then spatial gate of (mean_c + max_c) / 2 + BN."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    ca, sa = layer.channel_attention, layer.spatial_attention
    pooled = 0.5 * x.mean(axis=(1, 2)) + 0.5 * x.max(axis=(1, 2))
    logits = _dense(np.maximum(_dense(pooled, ca.mlp_reduce), 0), ca.mlp_expand)
    x = x * ref.gate(logits, ca.gate, _scale(ca))[:, None, None, :]
    blended = (0.5 * x.mean(axis=-1) + 0.5 * x.max(axis=-1))[..., None]
    y = ref.conv2d_same(blended, _w(sa.conv.kernel))
    if sa.use_batchnorm:
        bn = sa.bn
        y = ref.batchnorm_inference(y, _w(bn.gamma), _w(bn.beta), _w(bn.moving_mean), _w(bn.moving_variance), 1e-5)
    return ref.from_channels_last(x * ref.gate(y, sa.gate, _scale(sa)), layer.data_format)


def _avg_pool_excluding_padding(x, extent):
    """PyTorch avg_pool2d(kernel 2e - 1, stride e, padding e - 1, count_include_pad=False)."""
    b, h, w, c = x.shape
    k, out_h, out_w = 2 * extent - 1, -(-h // extent), -(-w // extent)
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        for j in range(out_w):
            r0, c0 = i * extent - (extent - 1), j * extent - (extent - 1)
            window = x[:, max(r0, 0) : min(r0 + k, h), max(c0, 0) : min(c0 + k, w)]
            out[:, i, j] = window.mean(axis=(1, 2))
    return out


def _depthwise_strided(x, kernel, stride, pad):
    """Depthwise convolution, symmetric zero padding `pad`, kernel (kh, kw, C, 1)."""
    kh, kw = kernel.shape[:2]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride] * kernel[i, j, :, 0]
    return out


def ge_reference(layer, x):
    """Gather-Excite (timm GatherExcite; global GE-θ as the paper): gather, MLP, gate, nearest resize, multiply."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    h, w = x.shape[1:3]
    if not layer.extra_params:
        y = x.mean(axis=(1, 2), keepdims=True) if layer.extent == 0 else _avg_pool_excluding_padding(x, layer.extent)
    else:
        y, n = x, 1 if layer.extent == 0 else int(np.log2(layer.extent))
        for i in range(n):
            conv = getattr(layer, f"gather_conv{i + 1}")
            y = _depthwise_strided(y, _w(kernel_of(conv)), 1 if layer.extent == 0 else 2, 0 if layer.extent == 0 else 1)
            if layer.use_batchnorm:
                bn = getattr(layer, f"gather_bn{i + 1}")
                y = ref.batchnorm_inference(
                    y, _w(bn.gamma), _w(bn.beta), _w(bn.moving_mean), _w(bn.moving_variance), 1e-5
                )
            y = np.maximum(y, 0) if i < n - 1 else y
    if layer.use_mlp:
        y = _dense(np.maximum(_dense(y, layer.fc1), 0), layer.fc2)
    g = ref.gate(y, layer.gate, _scale(layer))
    g = g[:, (np.arange(h) * g.shape[1]) // h][:, :, (np.arange(w) * g.shape[2]) // w]  # nearest, PyTorch's
    return ref.from_channels_last(x * g, layer.data_format)


def gc_reference(layer, x):
    """GCNet: context = softmax-weighted sum (or mean); per fusion fc1, LayerNorm, ReLU, fc2; scale and/or add."""
    x = ref.to_channels_last(np.asarray(x, "float64"), layer.data_format)
    b, h, w, c = x.shape
    if layer.use_attn:
        logits = _dense(x, layer.conv_attn)[..., 0].reshape(b, h * w)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        context = np.einsum("bnc,bn->bc", x.reshape(b, h * w, c), p)
    else:
        context = x.mean(axis=(1, 2))

    def transform(fusion):
        y = _dense(context, getattr(layer, f"{fusion}_fc1"))
        mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
        y = (y - mu) / np.sqrt(var + layer.epsilon)
        y = y * _w(getattr(layer, f"{fusion}_norm_gamma")) + _w(getattr(layer, f"{fusion}_norm_beta"))
        return _dense(np.maximum(y, 0), getattr(layer, f"{fusion}_fc2"))[:, None, None, :]

    out = x
    if "scale" in layer.fusion:
        out = out * ref.gate(transform("scale"), layer.gate, _scale(layer))
    if "add" in layer.fusion:
        out = out + transform("add")
    return ref.from_channels_last(out, layer.data_format)


# The softmax over positions ignores a constant: the attention logits' bias gets no gradient (timm has it).
SHIFT_INVARIANT = ("conv_attn/bias",)

# name: (class, its NumPy reference, the timm-form kwargs, another form's kwargs)
ZOO = {
    "scoord": (ka.SimpleCoordinateAttention, scoord_reference, {}, dict(residual=True, activation="hard_swish")),
    "ela": (ka.EfficientLocalAttention, ela_reference, {}, dict(shared=True, norm_groups=8, activation="linear")),
    "strip": (ka.StripAttention, strip_reference, {}, dict(use_conv=False, residual=True, gate="hard_sigmoid")),
    "ecam": (ka.EfficientChannelAttentionMLP, ecam_reference, {}, dict(kernel_size=5, activation="swish")),
    "lcbam": (ka.LightCBAM, lcbam_reference, dict(reduction=4), dict(hidden_channels=6, use_bias=True)),
    "ge": (ka.GatherExcite, ge_reference, dict(extent=2), dict(extent=4, extra_params=True)),
    "gc": (ka.GlobalContext, gc_reference, {}, dict(fusion=("scale", "add"), use_attn=False, gate="hard_sigmoid")),
    "gca": (ka.GlobalContext, gc_reference, dict(fusion="add"), dict(fusion="add", epsilon=1e-5, reduction=4)),
}


# "gca" is GlobalContext again (add fusion): its battery runs in test_battery_other_form_channels_first.
@pytest.mark.parametrize("name", sorted(set(ZOO) - {"gca"}))
def test_battery(name, tmp_path):
    cls, reference, kwargs, _ = ZOO[name]
    run_layer_test(
        cls,
        dict(kwargs, data_format="channels_last"),
        (2, 8, 6, 32),
        reference_fn=reference,
        tmp_path=tmp_path,
        dynamic_input_shape=(None, None, None, 32),
        frozen_ok=SHIFT_INVARIANT,
    )


# The other published forms and channels_first are the same formulas in every mode; the jit steps of
# JAX and PyTorch cost 15-100 s a configuration on 2 cores (CI time).
@pytest.mark.tensorflow_backends(reason="argument variants; JAX and PyTorch run timm's form channels_last")
@pytest.mark.parametrize("name", sorted(ZOO))
def test_battery_other_form_channels_first(name, tmp_path):
    cls, reference, _, kwargs = ZOO[name]
    run_layer_test(
        cls,
        dict(kwargs, data_format="channels_first"),
        (2, 32, 8, 8),
        reference_fn=reference,
        tmp_path=tmp_path,
        frozen_ok=SHIFT_INVARIANT,
    )


@pytest.mark.tensorflow_backends(reason="argument variants")
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (ka.GatherExcite, dict(extra_params=True)),  # global GE-θ: one depthwise convolution over the whole map
        (ka.GatherExcite, dict(use_mlp=False, extent=2)),
        (ka.EfficientLocalAttention, dict(use_norm=False, start_as_identity=True)),
        (ka.StripAttention, dict(kernel_size=5, use_bias=True, start_as_identity=True)),
        (ka.GlobalContext, dict(fusion="scale", start_as_identity=True, hidden_channels=5)),
    ],
)
def test_battery_more_forms(cls, kwargs, tmp_path):
    reference = next(ref_fn for c, ref_fn, *_ in ZOO.values() if c is cls)
    run_layer_test(cls, kwargs, (2, 8, 8, 16), reference_fn=reference, tmp_path=tmp_path, frozen_ok=SHIFT_INVARIANT)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_attach_keeps_the_outputs_at_insertion(name):
    backbone = user_cnn()
    model = ka.attach(backbone, name)
    inserted = [layer for layer in model.layers if isinstance(layer, ka.layers.ATTENTIONS[name])]
    assert len(inserted) == 3 and all(layer.name.endswith(f"_{name}") for layer in inserted)
    if name == "gca":
        assert all(layer.fusion == ("add",) for layer in inserted)
    x = images(4, 32)
    expected = to_numpy(backbone(x))
    np.testing.assert_allclose(to_numpy(model(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.run_once(reason="every name of timm's create_attn, one factory")
def test_get_attention_knows_every_timm_cnn_attention():
    timm_names = "se ese eca ecam ceca ge gc gca cbam lcbam coord scoord ela strip".split()
    for name in timm_names:
        assert isinstance(ka.get_attention(name.upper()), ka.layers.ATTENTIONS[name])
    assert ka.get_attention("gca").fusion == ("add",) and ka.get_attention("gc").fusion == ("scale",)
    assert ka.get_attention("gca", fusion="scale").fusion == ("scale",)  # the caller's argument wins
    with pytest.raises(ValueError, match=r"get_attention: unknown attention 'nl'; expected one of \["):
        ka.get_attention("nl")


@pytest.mark.run_once(reason="argument checks")
@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ka.StripAttention, dict(kernel_size=4), r"`kernel_size` must be a positive odd integer.*got 4"),
        (ka.StripAttention, dict(use_conv=False, start_as_identity=True), "needs `use_conv=True`"),
        (ka.StripAttention, dict(residual=True, start_as_identity=True), "excludes `residual=True`"),
        (ka.EfficientLocalAttention, dict(norm_groups=0), r"`norm_groups` must be an integer >= 1; got 0"),
        (ka.EfficientLocalAttention, dict(activation="gelu"), r"unknown `activation` 'gelu'"),
        (ka.EfficientLocalAttention, dict(kernel_size=0), "positive odd integer"),
        (ka.SimpleCoordinateAttention, dict(hidden_channels=-1), r"`hidden_channels` must be an integer >= 1"),
        (ka.EfficientChannelAttentionMLP, dict(hidden_channels=4, reduction=2), "excludes `reduction`"),
        (ka.EfficientChannelAttentionMLP, dict(kernel_size=2), "positive odd integer"),
        (ka.GatherExcite, dict(extent=3), r"`extent` must be 0 or an even number.*got 3"),
        (ka.GatherExcite, dict(extent=6, extra_params=True), r"0 or a power of two.*got 6"),
        (ka.GatherExcite, dict(use_mlp=False, start_as_identity=True), "needs `use_mlp=True`"),
        (ka.GatherExcite, dict(extent=-2), r"`extent` must be an integer >= 0"),
        (ka.GlobalContext, dict(fusion="mul"), r"`fusion` must be 'scale', 'add' or \('scale', 'add'\).*'mul'"),
        (ka.GlobalContext, dict(fusion=("add", "add")), "`fusion` must be"),
        (ka.GlobalContext, dict(epsilon=0), r"`epsilon` must be a positive number"),
        (ka.GlobalContext, dict(gate="relu"), r"unknown `gate` 'relu'"),
        (ka.LightCBAM, dict(kernel_size=2), "positive odd integer"),
    ],
)
def test_bad_arguments_name_the_layer(cls, kwargs, message):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: .*{message}"):
        cls(**kwargs)


@pytest.mark.run_once(reason="shape checks")
def test_bad_inputs_name_the_layer():
    with pytest.raises(ValueError, match=r"EfficientLocalAttention: `norm_groups`=5 does not divide the 32 input"):
        ka.EfficientLocalAttention(norm_groups=5)(np.zeros((1, 4, 4, 32), "float32"))
    with pytest.raises(ValueError, match=r"GatherExcite: global gathering with parameters .* must be known"):
        ka.GatherExcite(extra_params=True).build((None, None, None, 8))
    with pytest.raises(TypeError, match=r"GlobalContext: expected a floating-point input; got dtype int32"):
        ka.GlobalContext()(np.zeros((1, 4, 4, 8), "int32"))
    with pytest.raises(ValueError, match=r"StripAttention: expected a 4-D input"):
        ka.StripAttention()(np.zeros((1, 4, 8), "float32"))


# --------------------------------------------------------------- timm's PyTorch modules, from its code


def _torch_zoo():
    """PyTorch modules written from timm 1.0.31's coord_attn.py, eca.py, cbam.py, gather_excite.py and
    global_context.py (and the ELA paper's published block), returning (module, keras layer, copy) makers."""
    import torch

    nn, F = torch.nn, torch.nn.functional

    class SimpleCoordAttn(nn.Module):
        def __init__(self, c, rd):
            super().__init__()
            self.fc1, self.fc_h, self.fc_w = nn.Linear(c, rd), nn.Linear(rd, c), nn.Linear(rd, c)

        def forward(self, x):
            x_h = F.silu(self.fc1(x.mean(dim=3).transpose(1, 2)))
            x_w = F.silu(self.fc1(x.mean(dim=2).transpose(1, 2)))
            a_h = self.fc_h(x_h).transpose(1, 2).unsqueeze(-1)
            a_w = self.fc_w(x_w).transpose(1, 2).unsqueeze(-2)
            return x * torch.sigmoid(a_h + a_w)

    class EfficientLocalAttn(nn.Module):  # timm: separate convs and GroupNorm1s, SiLU, sigmoid
        def __init__(self, c, k=7):
            super().__init__()
            self.conv_h = nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c, bias=False)
            self.conv_w = nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c, bias=False)
            self.norm_h, self.norm_w = nn.GroupNorm(1, c), nn.GroupNorm(1, c)

        def forward(self, x):
            a_h = torch.sigmoid(F.silu(self.norm_h(self.conv_h(x.mean(dim=3, keepdim=True)))))
            a_w = torch.sigmoid(F.silu(self.norm_w(self.conv_w(x.mean(dim=2, keepdim=True)))))
            return x * a_h * a_w

    class ELAPaper(nn.Module):  # the ELA paper's block: one Conv1d and one GroupNorm(16) for both strips
        def __init__(self, c, k=7):
            super().__init__()
            self.conv = nn.Conv1d(c, c, k, padding=k // 2, groups=c, bias=False)
            self.gn = nn.GroupNorm(16, c)

        def forward(self, x):
            b, c, h, w = x.size()
            x_h = torch.sigmoid(self.gn(self.conv(x.mean(dim=3)))).view(b, c, h, 1)
            x_w = torch.sigmoid(self.gn(self.conv(x.mean(dim=2)))).view(b, c, 1, w)
            return x * x_h * x_w

    class StripAttn(nn.Module):
        def __init__(self, c, k=3):
            super().__init__()
            self.conv_h = nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0), groups=c, bias=False)
            self.conv_w = nn.Conv2d(c, c, (1, k), padding=(0, k // 2), groups=c, bias=False)

        def forward(self, x):
            return x * torch.sigmoid(
                self.conv_h(x.mean(dim=3, keepdim=True)) + self.conv_w(x.mean(dim=2, keepdim=True))
            )

    class EcaMlp(nn.Module):  # EcaModule(use_mlp=True)
        def __init__(self, rd, k):
            super().__init__()
            self.conv = nn.Conv1d(1, rd, 1, bias=True)
            self.conv2 = nn.Conv1d(rd, 1, k, padding=(k - 1) // 2, bias=True)

        def forward(self, x):
            y = self.conv2(F.relu(self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))))
            return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1)

    class LightCbam(nn.Module):  # LightCbamModule: LightChannelAttn, LightSpatialAttn (ConvNormAct, no act)
        def __init__(self, c, rd, k=7):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, rd, 1, bias=False), nn.Conv2d(rd, c, 1, bias=False)
            self.conv, self.bn = nn.Conv2d(1, 1, k, padding=k // 2, bias=False), nn.BatchNorm2d(1)

        def forward(self, x):
            pool = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
            x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(pool))))
            attn = 0.5 * x.mean(dim=1, keepdim=True) + 0.5 * x.amax(dim=1, keepdim=True)
            return x * torch.sigmoid(self.bn(self.conv(attn)))

    class GatherExcite(nn.Module):  # extent 4 with parameters: two dw 3x3 stride-2 convs, BN, ReLU between
        def __init__(self, c, rd):
            super().__init__()
            self.conv1, self.norm1 = nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.norm2 = nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c)
            self.fc1, self.fc2 = nn.Conv2d(c, rd, 1), nn.Conv2d(rd, c, 1)

        def forward(self, x):
            y = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
            y = F.interpolate(self.fc2(F.relu(self.fc1(y))), size=x.shape[-2:])
            return x * torch.sigmoid(y)

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
                0, 3, 1, 2
            )

    class GlobalContext(nn.Module):  # use_attn, fuse_scale and fuse_add; ConvMlp with LayerNorm2d(eps 1e-6)
        def __init__(self, c, rd):
            super().__init__()
            self.conv_attn = nn.Conv2d(c, 1, 1, bias=True)
            self.mlp = nn.ModuleDict(
                {
                    f: nn.ModuleDict(
                        dict(fc1=nn.Conv2d(c, rd, 1), norm=LayerNorm2d(rd, eps=1e-6), fc2=nn.Conv2d(rd, c, 1))
                    )
                    for f in ("scale", "add")
                }
            )

        def forward(self, x):
            b, c, h, w = x.shape
            attn = F.softmax(self.conv_attn(x).reshape(b, 1, h * w), dim=-1).unsqueeze(3)
            context = (x.reshape(b, c, h * w).unsqueeze(1) @ attn).view(b, c, 1, 1)
            mlp = {f: m.fc2(F.relu(m.norm(m.fc1(context)))) for f, m in self.mlp.items()}
            return x * torch.sigmoid(mlp["scale"]) + mlp["add"]

    return torch, dict(
        scoord=SimpleCoordAttn,
        ela=EfficientLocalAttn,
        ela_paper=ELAPaper,
        strip=StripAttn,
        ecam=EcaMlp,
        lcbam=LightCbam,
        ge=GatherExcite,
        gc=GlobalContext,
    )


def _conv_kernel(t):
    return t.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)


def _depthwise_kernel(t):
    return t.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _strip_kernel(t):
    """A (C, 1, k, 1), (C, 1, 1, k) or Conv1d (C, 1, k) kernel as our (k, 1, C, 1) strip kernel."""
    return t.reshape(t.shape[0], -1).T[:, None, :, None]


def _copy(layer, state, pairs):
    for variable, key, convert in pairs:
        variable.assign(convert(state[key]) if convert else state[key])


def _bn(bn, prefix):
    return [
        (bn.gamma, f"{prefix}.weight", None),
        (bn.beta, f"{prefix}.bias", None),
        (bn.moving_mean, f"{prefix}.running_mean", None),
        (bn.moving_variance, f"{prefix}.running_var", None),
    ]


def _copy_pairs(form, layer):
    """(keras variable, PyTorch key, conversion) for each published module."""
    dense = lambda t: t.T[None, None]  # noqa: E731 - nn.Linear (out, in) -> (1, 1, in, out)
    if form == "scoord":
        return [
            (layer.conv1.kernel, "fc1.weight", dense),
            (layer.conv1.bias, "fc1.bias", None),
            (layer.conv_h.kernel, "fc_h.weight", dense),
            (layer.conv_h.bias, "fc_h.bias", None),
            (layer.conv_w.kernel, "fc_w.weight", dense),
            (layer.conv_w.bias, "fc_w.bias", None),
        ]
    if form == "ela":
        return [
            (layer.conv_h.kernel, "conv_h.weight", _strip_kernel),
            (layer.conv_w.kernel, "conv_w.weight", _strip_kernel),
            (layer.norm_h_gamma, "norm_h.weight", None),
            (layer.norm_h_beta, "norm_h.bias", None),
            (layer.norm_w_gamma, "norm_w.weight", None),
            (layer.norm_w_beta, "norm_w.bias", None),
        ]
    if form == "ela_paper":
        return [
            (layer.conv_h.kernel, "conv.weight", _strip_kernel),
            (layer.norm_h_gamma, "gn.weight", None),
            (layer.norm_h_beta, "gn.bias", None),
        ]
    if form == "strip":
        return [
            (layer.conv_h.kernel, "conv_h.weight", _strip_kernel),
            (layer.conv_w.kernel, "conv_w.weight", _strip_kernel),
        ]
    if form == "ecam":
        return [
            (layer.conv.kernel, "conv.weight", lambda t: t.reshape(1, 1, 1, -1)),  # (rd, 1, 1)
            (layer.conv.bias, "conv.bias", None),
            (layer.conv2.kernel, "conv2.weight", lambda t: t[0].T[None, :, :, None]),  # (1, rd, k) -> (1, k, rd, 1)
            (layer.conv2.bias, "conv2.bias", None),
        ]
    if form == "lcbam":
        ca, sa = layer.channel_attention, layer.spatial_attention
        return [
            (ca.mlp_reduce.kernel, "fc1.weight", _conv_kernel),
            (ca.mlp_expand.kernel, "fc2.weight", _conv_kernel),
            (sa.conv.kernel, "conv.weight", _conv_kernel),
            *_bn(sa.bn, "bn"),
        ]
    if form == "ge":
        pairs = [
            (layer.fc1.kernel, "fc1.weight", _conv_kernel),
            (layer.fc1.bias, "fc1.bias", None),
            (layer.fc2.kernel, "fc2.weight", _conv_kernel),
            (layer.fc2.bias, "fc2.bias", None),
        ]
        for i in (1, 2):
            pairs += [(getattr(layer, f"gather_conv{i}").kernel, f"conv{i}.weight", _depthwise_kernel)]
            pairs += _bn(getattr(layer, f"gather_bn{i}"), f"norm{i}")
        return pairs
    pairs = [(layer.conv_attn.kernel, "conv_attn.weight", _conv_kernel), (layer.conv_attn.bias, "conv_attn.bias", None)]
    for f in ("scale", "add"):
        fc1, fc2 = getattr(layer, f"{f}_fc1"), getattr(layer, f"{f}_fc2")
        pairs += [
            (fc1.kernel, f"mlp.{f}.fc1.weight", _conv_kernel),
            (fc1.bias, f"mlp.{f}.fc1.bias", None),
            (getattr(layer, f"{f}_norm_gamma"), f"mlp.{f}.norm.weight", None),
            (getattr(layer, f"{f}_norm_beta"), f"mlp.{f}.norm.bias", None),
            (fc2.kernel, f"mlp.{f}.fc2.weight", _conv_kernel),
            (fc2.bias, f"mlp.{f}.fc2.bias", None),
        ]
    return pairs


def _pair_of(form, channels):
    """(PyTorch module, Keras layer) for `form`, both channels_first, widths as timm computes them."""
    _, modules = _torch_zoo()
    cf = dict(data_format="channels_first")
    if form == "scoord":  # make_divisible(64 * 0.25 * 2/3, 8, round_limit=0) = 8
        return modules["scoord"](channels, 8), ka.SimpleCoordinateAttention(**cf)
    if form == "ela":
        return modules["ela"](channels), ka.EfficientLocalAttention(**cf)
    if form == "ela_paper":
        return modules["ela_paper"](channels), ka.EfficientLocalAttention(
            shared=True, norm_groups=16, activation="linear", **cf
        )
    if form == "strip":
        return modules["strip"](channels), ka.StripAttention(**cf)
    if form == "ecam":  # make_divisible(64 / 8, 8) = 8; kernel 3 for 64 channels
        return modules["ecam"](8, 3), ka.EfficientChannelAttentionMLP(**cf)
    if form == "lcbam":  # max(1, int(64 / 16 + 0.5)) = 4
        return modules["lcbam"](channels, 4), ka.LightCBAM(**cf)
    if form == "ge":  # max(1, int(64 / 16 + 0.5)) = 4
        return modules["ge"](channels, 4), ka.GatherExcite(extent=4, extra_params=True, **cf)
    return modules["gc"](channels, 8), ka.GlobalContext(fusion=("scale", "add"), **cf)  # int(64 / 8 + 0.5)


@pytest.mark.run_once(reason="PyTorch reference modules, the same in every Keras mode")
@pytest.mark.parametrize("form", ["scoord", "ela", "ela_paper", "strip", "ecam", "lcbam", "ge", "gc"])
def test_equals_timms_pytorch_modules(form):
    torch, _ = _torch_zoo()
    channels = 64
    module, layer = _pair_of(form, channels)
    x = np.random.default_rng(2).normal(size=(2, channels, 9, 12)).astype("float32")
    layer(x)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if "num_batches" not in name:
                value = torch.randn(tensor.shape, generator=generator) * 0.5
                tensor.copy_(value.abs() + 0.5 if "running_var" in name else value)
    module.eval()
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    pairs = _copy_pairs(form, layer)
    _copy(layer, state, pairs)
    assert len(pairs) == len(layer.weights)  # every weight of the layer comes from the module
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    actual = to_numpy(layer(x))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # Control: the PyTorch module with one weight moved is no longer equal.
    with torch.no_grad():
        next(iter(module.parameters())).add_(0.1)
        moved = module(torch.from_numpy(x)).numpy()
    assert not np.allclose(actual, moved, atol=1e-3 * np.abs(expected).max())


@pytest.fixture(scope="module")
def mobile_backbones():
    from keras_attention.backend import keras

    mobilenet = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    resnet = keras.applications.ResNet50(input_shape=(32, 32, 3), include_top=False, weights=None)
    return {"MobileNetV2": mobilenet, "ResNet50": resnet}


@pytest.mark.run_once(reason="graph surgery, the same in every Keras mode (test_backbones runs it per mode)")
@pytest.mark.parametrize("name", "se ese eca ecam ceca ge gc gca cbam lcbam coord scoord ela strip".split())
def test_every_timm_name_attaches_into_mobilenetv2_and_resnet50(name, mobile_backbones):
    x = images(2, 32)
    for family, backbone in mobile_backbones.items():
        model = ka.attach(backbone, name)  # on the residual branches: 10 in MobileNetV2, 16 in ResNet50
        inserted = [layer for layer in model.layers if isinstance(layer, ka.layers.ATTENTIONS[name])]
        assert len(inserted) == (10 if family == "MobileNetV2" else 16), (family, len(inserted))
        expected = to_numpy(backbone(x))
        np.testing.assert_allclose(to_numpy(model(x)), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
