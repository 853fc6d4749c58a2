"""The one place that knows there are two Kerases.

Keras 3 is the default; `TF_USE_LEGACY_KERAS=1` (what tensorflow-model-
optimization needs) selects `tf_keras`. The choice is read once, when this
module is first imported, from the same variable TensorFlow itself reads, so
`tf.keras` and `keras_attention` always agree. Nothing here imports tfmot: its
import sets `TF_USE_LEGACY_KERAS` as a side effect, which would make the result
depend on import order.

Layers import `keras` and `ops` from here. Under Keras 3 `ops` is `keras.ops`
(so the layers run on the TensorFlow and JAX backends); under tf_keras it is a
small shim over TensorFlow with the same signatures and semantics.
"""

import contextlib
import contextvars
import os

from keras_attention import _compat

_LEGACY_VALUES = ("1", "true", "yes")

IS_LEGACY = os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in _LEGACY_VALUES

if IS_LEGACY:
    import tensorflow as _tf
    import tf_keras as keras

    def _pair(value):
        return (value, value) if isinstance(value, int) else tuple(value)

    class _LegacyOps:
        """The subset of `keras.ops` the layers use, on TensorFlow, for tf_keras."""

        cast = staticmethod(_tf.cast)
        convert_to_tensor = staticmethod(_tf.convert_to_tensor)
        sigmoid = staticmethod(_tf.sigmoid)
        relu = staticmethod(_tf.nn.relu)
        relu6 = staticmethod(_tf.nn.relu6)
        rsqrt = staticmethod(_tf.math.rsqrt)
        exp = staticmethod(_tf.exp)
        log = staticmethod(_tf.math.log)
        sqrt = staticmethod(_tf.sqrt)
        floor = staticmethod(_tf.floor)
        ceil = staticmethod(_tf.math.ceil)
        abs = staticmethod(_tf.abs)
        minimum = staticmethod(_tf.minimum)
        maximum = staticmethod(_tf.maximum)
        add = staticmethod(_tf.add)
        equal = staticmethod(_tf.equal)
        zeros = staticmethod(lambda shape, dtype="float32": _tf.zeros(shape, dtype))
        where = staticmethod(_tf.where)
        shape = staticmethod(_tf.shape)
        reshape = staticmethod(_tf.reshape)
        zeros_like = staticmethod(_tf.zeros_like)
        ones_like = staticmethod(_tf.ones_like)
        logical_and = staticmethod(_tf.logical_and)
        sum = staticmethod(lambda x, axis=None, keepdims=False: _tf.reduce_sum(x, axis, keepdims))
        mean = staticmethod(lambda x, axis=None, keepdims=False: _tf.reduce_mean(x, axis, keepdims))
        max = amax = staticmethod(lambda x, axis=None, keepdims=False: _tf.reduce_max(x, axis, keepdims))
        min = staticmethod(lambda x, axis=None, keepdims=False: _tf.reduce_min(x, axis, keepdims))
        pad = staticmethod(lambda x, pad_width, mode="constant": _tf.pad(x, pad_width, mode=mode.upper()))
        matmul = staticmethod(_tf.matmul)
        concatenate = staticmethod(lambda xs, axis=0: _tf.concat(xs, axis))
        stack = staticmethod(lambda xs, axis=0: _tf.stack(xs, axis))
        transpose = staticmethod(lambda x, axes=None: _tf.transpose(x, axes))
        expand_dims = staticmethod(_tf.expand_dims)
        squeeze = staticmethod(lambda x, axis=None: _tf.squeeze(x, axis))
        clip = staticmethod(lambda x, lo, hi: _tf.clip_by_value(x, lo, hi))
        arange = staticmethod(lambda *args, dtype="int32": _tf.range(*args, dtype=dtype))
        take = staticmethod(lambda x, indices, axis=None: _tf.gather(x, indices, axis=axis))
        take_along_axis = staticmethod(
            lambda x, indices, axis=None: _tf.experimental.numpy.take_along_axis(x, indices, axis)
        )
        one_hot = staticmethod(lambda x, num_classes, axis=-1: _tf.one_hot(x, num_classes, axis=axis))
        tile = staticmethod(_tf.tile)
        broadcast_to = staticmethod(_tf.broadcast_to)
        repeat = staticmethod(lambda x, repeats, axis=None: _tf.repeat(x, repeats, axis=axis))
        flip = staticmethod(lambda x, axis=None: _tf.reverse(x, [axis]))
        conv = staticmethod(lambda x, kernel, padding="valid": _tf.nn.conv2d(x, kernel, 1, padding.upper()))
        average_pool = staticmethod(
            lambda x, pool_size, strides, padding="valid", data_format=None: _tf.nn.avg_pool2d(
                x, pool_size, strides, padding.upper()
            )  # channels_last only, as our layers call it
        )
        stop_gradient = staticmethod(_tf.stop_gradient)

        @staticmethod
        def depthwise_conv(x, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
            # channels_last only: the convolutions inside our layers are channels_last.
            strides = _pair(strides)
            return _tf.nn.depthwise_conv2d(x, kernel, (1, *strides, 1), padding.upper(), dilations=_pair(dilation_rate))

        @staticmethod
        def conv_transpose(x, kernel, strides, padding="valid", output_padding=None, data_format=None, dilation_rate=1):
            # channels_last, no output_padding: what SAGMaskHead's deconvolution uses.
            strides, (kh, kw) = _pair(strides), kernel.shape[:2]

            def size(n, k, s):
                return n * s if padding == "same" else (n - 1) * s + k

            shape = _tf.shape(x)
            out = _tf.stack([shape[0], size(shape[1], kh, strides[0]), size(shape[2], kw, strides[1]), kernel.shape[2]])
            y = _tf.nn.conv2d_transpose(x, kernel, out, strides=strides, padding=padding.upper())
            static = [None if n is None else size(n, k, s) for n, k, s in zip(x.shape[1:3], (kh, kw), strides)]
            return _tf.ensure_shape(y, (x.shape[0], *static, kernel.shape[2]))

        @staticmethod
        def hard_sigmoid(x):
            # Keras 3's (and PyTorch's) definition; tf_keras' own is 0.2x+0.5.
            return _tf.nn.relu6(x + 3.0) / 6.0

        @staticmethod
        def image_data_format():
            return keras.backend.image_data_format()

    ops = _LegacyOps()
    BACKEND = "tensorflow"
else:
    import keras
    from keras import ops

    BACKEND = keras.backend.backend()

KERAS_VERSION = keras.__version__


def describe():
    """Which Keras is running, in words, for reports and `keras-attention info`."""
    if IS_LEGACY:
        return f"tf_keras {KERAS_VERSION} (TF_USE_LEGACY_KERAS=1)"
    return f"Keras {KERAS_VERSION} on {BACKEND}"


def custom_gradient(fn):
    """`keras.ops.custom_gradient` (TensorFlow or JAX); `tf.custom_gradient` under tf_keras."""
    if IS_LEGACY:
        return _tf.custom_gradient(fn)
    return ops.custom_gradient(fn)


def image_data_format():
    """The global default data format of the active Keras."""
    if IS_LEGACY:
        return keras.backend.image_data_format()
    return keras.config.image_data_format()


def global_dtype_policy_name():
    """Name of the global mixed-precision policy of the active Keras."""
    if IS_LEGACY:
        return keras.mixed_precision.global_policy().name
    return keras.config.dtype_policy().name


def set_global_dtype_policy(name):
    """Sets the global mixed-precision policy of the active Keras."""
    keras.mixed_precision.set_global_policy(name)


def is_mixed_precision(model):
    """True when any layer of `model` computes in float16 or bfloat16."""
    for layer in [model] + all_layers(model):
        compute = getattr(layer, "compute_dtype", None)
        if compute in ("float16", "bfloat16"):
            return True
    return False


def _float32_config(config):
    """`config` with every mixed-precision dtype policy replaced by float32."""
    if isinstance(config, dict):
        return {k: "float32" if k == "dtype" and _is_mixed_policy(v) else _float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


def _is_mixed_policy(value):
    if isinstance(value, str):
        return value.startswith("mixed_") or value in ("float16", "bfloat16")
    if isinstance(value, dict) and "Policy" in str(value.get("class_name", "")):
        name = (value.get("config") or {}).get("name", "")
        return str(name).startswith("mixed_") or name in ("float16", "bfloat16")
    return False


def float32_copy(model, caller="keras_attention.backend.float32_copy", error=RuntimeError):
    """A float32 copy of a mixed-precision model, with the same weights and layer names.

    Each layer is rebuilt from its config with every mixed policy replaced by
    float32 (under a float32 global policy), then the weights are copied. The
    variables of a mixed-precision model are float32 already, so nothing is
    lost. Used by TFLite conversion, QAT and ONNX/OpenVINO export, each naming
    itself as `caller`; a model that cannot be rebuilt raises `error` (their
    own error class) with the way out.
    """
    previous = global_dtype_policy_name()

    def clone_layer(layer):
        return layer.__class__.from_config(_float32_config(layer.get_config()))

    set_global_dtype_policy("float32")
    try:
        try:
            clone = keras.models.clone_model(model, clone_function=clone_layer)
        except Exception as failure:  # noqa: BLE001 - re-raised with advice
            raise error(
                f"{caller}: could not rebuild the mixed-precision model {model.name!r} in float32 "
                f"({type(failure).__name__}: {failure}). Rebuild it yourself under "
                "keras.mixed_precision.set_global_policy('float32'), copy the weights with "
                "set_weights(), and pass that model."
            ) from failure
    finally:
        set_global_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    return clone


def accumulation_dtype(layer):
    """The dtype of a layer's pools, gates and their small convolutions: float32 at least.

    float32 under float16/bfloat16 policies (a float16 sum over a large map
    overflows, a float16 gate is coarse) and under float32; float64 in a
    float64 model, which would otherwise lose precision in the attention.
    """
    return "float64" if layer.compute_dtype == "float64" else "float32"


def _is_float64(x):
    if BACKEND == "torch":  # a comparison torch.compile traces without a graph break
        import torch

        return x.dtype in ("float64", torch.float64)
    return x.dtype == "float64"


def mean(x, axis, keepdims=False):
    """`ops.mean`, exact in float64 on every backend.

    Keras 3.15 on JAX and PyTorch computes the mean of a float64 tensor in
    float32 (its type promotion maps float64 to float32 off TensorFlow; about
    1e-7 relative error, in a float64 result); there a sum divided by the count.
    """
    if BACKEND in ("jax", "torch") and _is_float64(x):
        count = 1
        for a in axis if isinstance(axis, (tuple, list)) else (axis,):
            count *= x.shape[a]
        return ops.sum(x, axis=axis, keepdims=keepdims) / count
    return ops.mean(x, axis=axis, keepdims=keepdims)


def build_sublayer(layer, input_shape):
    """Builds a nested layer from its parent's `build()`.

    tf_keras names variables after the name scope they are created in, and a
    direct `build()` call enters none: two sublayers would both own a
    `kernel:0`, which collides in `.h5` files. Keras 3 scopes paths itself.
    """
    if IS_LEGACY:
        with _tf.name_scope(layer.name):
            layer.build(input_shape)
    else:
        layer.build(input_shape)


_PLAIN_GRAPH = contextvars.ContextVar("keras_attention_plain_graph", default=False)


@contextlib.contextmanager
def plain_graph():
    """Within it, `xla_compiling` is False: the layers trace as their plain Keras ops.

    For exporters that trace under `jax.jit` to write another format (ONNX
    through jax2onnx): XLA's formulations (a convolution as k*k shifted sums)
    would be written op by op into the file.
    """
    token = _PLAIN_GRAPH.set(True)
    try:
        yield
    finally:
        _PLAIN_GRAPH.reset(token)


def xla_compiling(tensor):
    """True while `tensor` is being traced for XLA compilation (and not within `plain_graph()`).

    TensorFlow: inside `tf.function(jit_compile=True)` (what `compile(jit_compile=True)`
    uses). JAX: under a trace (`jax.jit`, which Keras uses for fit/predict). Layers use
    it to pick formulations XLA's CPU/GPU code generators handle well, while eager
    calls, plain graphs, SavedModel/TFLite export and QAT keep the plain Keras layers.
    """
    # The backend first: PyTorch's torch.compile is not XLA (and TensorFlow is not
    # imported there), and reading the ContextVar would break torch.compile's graph.
    if BACKEND not in ("jax", "tensorflow") or _PLAIN_GRAPH.get():
        return False
    if BACKEND == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    import tensorflow as tf

    return not tf.executing_eagerly() and _compat.in_xla_context()


def all_layers(model):
    """Every layer inside `model`, recursively (nested models and sub-layers)."""
    layers = _compat.flatten_layers(model)
    if layers is not None:
        return layers
    found, stack = [], list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


def register(cls):
    """Registers a class under the package name, so saved models reload safely."""
    return keras.saving.register_keras_serializable(package="keras_attention")(cls)


def require_tensorflow(feature):
    """Raises a clear error when a TensorFlow-only feature runs on another backend."""
    if BACKEND != "tensorflow":
        raise RuntimeError(
            f"{feature} needs the TensorFlow backend, but Keras is running on "
            f"{BACKEND!r}. Set KERAS_BACKEND=tensorflow (or TF_USE_LEGACY_KERAS=1) "
            "before importing keras_attention."
        )


def require_legacy_keras(feature):
    """Raises a clear error when a tf_keras-only feature runs under Keras 3."""
    if not IS_LEGACY:
        raise RuntimeError(
            f"{feature} needs tf_keras: tensorflow-model-optimization only supports "
            "Keras 2. Set the environment variable TF_USE_LEGACY_KERAS=1 before "
            "Python imports tensorflow, keras or keras_attention (e.g. "
            "`TF_USE_LEGACY_KERAS=1 python train.py`), and install the [qat] extra."
        )
