"""One call that puts a layer through the whole battery (cf. keras-hub's run_layer_test).

`run_layer_test(cls, init_kwargs, input_shape, ...)` checks, for the active
Keras (Keras 3 on TensorFlow or JAX, or tf_keras):
  1. symbolic and eager output shapes;
  2. `get_config()` round trip: same config, and the clone computes the same
     with the same weights; deserialization by the registered name;
  3. `.keras` save and reload (in process, `safe_mode=True`): identical outputs;
  4. the NumPy reference of the paper's formula, on random weights, to 1e-5;
     with unknown sizes allowed, a model built on them computes the same in `predict`;
  5. a training step inside `compile(jit_compile=True)`: loss finite, every
     trainable weight moved (plain SGD moves a weight iff its gradient is non-zero);
  6. `mixed_float16` and `mixed_bfloat16`: output in the compute dtype, finite,
     close to the float32 output with the same weights; a `float64` model has
     float64 weights and output, equal to the NumPy reference to 1e-10 (float32
     anywhere inside would leave ~1e-7; JAX only with 64-bit arrays enabled;
     not through Keras' BatchNormalization off TensorFlow, which computes float32);
  7. one feature map with a channel more than the layer was built for: an error
     naming the layer when a layer built for that many has other weight shapes;
     otherwise that error or a result of the input's shape.
"""

import contextlib

import numpy as np

from keras_attention.backend import BACKEND, all_layers, keras, set_global_dtype_policy

DTYPE_TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}


def as_list(x):
    return list(x) if isinstance(x, (list, tuple)) and not _is_shape(x) else [x]


def _is_shape(x):
    return isinstance(x, tuple) and all(d is None or isinstance(d, int) for d in x)


def to_numpy(t):
    if hasattr(t, "detach"):  # a torch tensor (Keras 3 on PyTorch): .numpy() refuses grad and bfloat16
        t = t.detach().cpu()
        t = t if dtype_name(t) == "float64" else t.float()
    return np.asarray(t).astype("float64") if not hasattr(t, "numpy") else np.asarray(t.numpy()).astype("float64")


def dtype_name(t):
    return str(getattr(t.dtype, "name", t.dtype)).replace("torch.", "")  # torch.float16 -> float16


def build_model(layer, input_shapes, dtype=None):
    """A functional model around `layer`; the batch dimension is left free.

    `input_shapes` include the batch; None entries stay unknown in the model.
    """
    inputs = [keras.Input(tuple(shape[1:]), dtype=dtype) for shape in input_shapes]
    outputs = layer(inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)


def random_inputs(input_shapes, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=shape)).astype("float32") for shape in input_shapes]


def _call(model, inputs, training=False):
    out = model(inputs if len(inputs) > 1 else inputs[0], training=training)
    return [to_numpy(o) for o in as_list_outputs(out)]


def as_list_outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _assert_outputs_close(actual, expected, rtol, atol, what):
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=what)


def check_shapes(layer_cls, init_kwargs, input_shapes, expected_output_shapes):
    layer = layer_cls(**init_kwargs)
    model = build_model(layer, input_shapes)
    symbolic = [tuple(o.shape) for o in as_list_outputs(model.outputs)]
    expected_symbolic = [(None,) + tuple(s[1:]) for s in expected_output_shapes]
    assert symbolic == expected_symbolic, f"symbolic shapes {symbolic} != {expected_symbolic}"
    eager = [o.shape for o in _call(model, random_inputs(input_shapes))]
    assert eager == [tuple(s) for s in expected_output_shapes], f"eager shapes {eager}"
    return layer, model


def check_unknown_sizes(layer_cls, init_kwargs, model, dynamic_shapes, input_shapes):
    """Built on shapes with unknown (None) sizes, the layer computes what the fixed-size `model` does.

    `predict` runs a compiled graph in which the sizes stay unknown (on TensorFlow
    SpatialAttention then takes its plain convolution), the fixed-size model runs
    eagerly: two formulations, one function.
    """
    dynamic = build_model(layer_cls(**init_kwargs), dynamic_shapes)
    dynamic.set_weights(model.get_weights())
    inputs = random_inputs(input_shapes, seed=8)
    actual = as_list_outputs(dynamic.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0))
    _assert_outputs_close(
        [to_numpy(o) for o in actual],
        _call(model, inputs),
        1e-5,
        1e-5,
        "the model built with unknown sizes differs from the fixed-size one",
    )


def check_config_round_trip(layer, model, input_shapes):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, "get_config() does not round-trip"
    clone_model = build_model(clone, input_shapes)
    clone_model.set_weights(model.get_weights())
    inputs = random_inputs(input_shapes, seed=1)
    _assert_outputs_close(_call(clone_model, inputs), _call(model, inputs), 0, 0, "clone differs")
    # Deserialization by registered name, as a saved model does it.
    revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is type(layer)


def save_and_reload(model, path):
    model.save(str(path))
    return keras.models.load_model(str(path), safe_mode=True)


def check_keras_file(model, input_shapes, tmp_path):
    reloaded = save_and_reload(model, tmp_path / "model.keras")
    inputs = random_inputs(input_shapes, seed=2)
    _assert_outputs_close(_call(reloaded, inputs), _call(model, inputs), 0, 0, ".keras reload differs")


def check_reference(layer, model, input_shapes, reference_fn, seed=3, atol=1e-5):
    from tests.kit.layer_reference import randomize_weights

    randomize_weights(layer, seed)
    inputs = random_inputs(input_shapes, seed=seed)
    actual = _call(model, inputs)
    expected = as_list_outputs(reference_fn(layer, *inputs))
    _assert_outputs_close(actual, [np.asarray(e) for e in expected], atol, atol, "differs from the NumPy reference")


def check_jit_training_step(layer, model, input_shapes, frozen_ok=()):
    from tests.kit.layer_reference import randomize_weights

    randomize_weights(layer, seed=4)
    inputs = random_inputs(input_shapes, seed=5)
    targets = [np.random.default_rng(6).normal(size=o.shape).astype("float32") for o in _call(model, inputs)]
    before = {w.path if hasattr(w, "path") else w.name: np.array(w.numpy()) for w in layer.trainable_weights}
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse", jit_compile=True)
    history = model.fit(
        inputs if len(inputs) > 1 else inputs[0],
        targets if len(targets) > 1 else targets[0],
        batch_size=len(inputs[0]),
        epochs=2,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"])), history.history
    stuck = [
        name
        for name, w in zip(before, layer.trainable_weights)
        if np.array_equal(before[name], w.numpy()) and not any(f in name for f in frozen_ok)
    ]
    assert not stuck, f"no gradient reached {stuck}"


def check_dtype_policies(layer_cls, init_kwargs, reference_model, input_shapes):
    inputs = random_inputs(input_shapes, seed=7)
    expected = _call(reference_model, inputs)
    for policy in DTYPE_TOLERANCE:
        set_global_dtype_policy(policy)
        try:
            layer = layer_cls(**init_kwargs)
            model = build_model(layer, input_shapes)
            model.set_weights(reference_model.get_weights())
            outputs = as_list_outputs(model(inputs if len(inputs) > 1 else inputs[0]))
        finally:
            set_global_dtype_policy("float32")
        compute = policy.split("_")[1]
        for out, exp in zip(outputs, expected):
            assert dtype_name(out) == compute, f"{policy}: output dtype {dtype_name(out)}"
            out = to_numpy(out)
            assert np.all(np.isfinite(out)), policy
            tol = DTYPE_TOLERANCE[policy] * max(1.0, np.abs(exp).max())
            np.testing.assert_allclose(out, exp, atol=tol, err_msg=policy)


def check_float64(layer_cls, init_kwargs, reference_model, input_shapes, reference_fn):
    """float64 weights and outputs, equal to the NumPy reference to 1e-10. JAX computes float64 only with x64
    on, so the check turns it on for itself (`jax.enable_x64`). Keras 3.15's BatchNormalization computes
    float64 in float32 on JAX and PyTorch (its type promotion maps float64 to float32 off TensorFlow): a layer
    with one inside is held to a float32 tolerance there, not skipped."""
    x64 = contextlib.nullcontext()
    if BACKEND == "jax":
        import jax

        x64 = jax.enable_x64(True)
    with x64:
        set_global_dtype_policy("float64")
        try:
            layer = layer_cls(**init_kwargs)
            model = build_model(layer, input_shapes, dtype="float64")  # Keras 3 casts inputs to floatx otherwise
            model.set_weights(reference_model.get_weights())
            inputs = [x.astype("float64") for x in random_inputs(input_shapes, seed=8)]
            outputs = as_list_outputs(model(inputs if len(inputs) > 1 else inputs[0]))
        finally:
            set_global_dtype_policy("float32")
        not_float64 = {getattr(w, "path", w.name): dtype_name(w) for w in layer.weights if dtype_name(w) != "float64"}
        assert not not_float64, f"float64 model, weights of another dtype: {not_float64}"
        assert [dtype_name(o) for o in outputs] == ["float64"] * len(outputs)
        keras_float32_inside = BACKEND != "tensorflow" and any(
            isinstance(sublayer, keras.layers.BatchNormalization) for sublayer in all_layers(layer)
        )
        if reference_fn is not None:
            expected = [np.asarray(e) for e in as_list_outputs(reference_fn(layer, *inputs))]
            tolerance = 1e-5 if keras_float32_inside else 1e-10
            _assert_outputs_close(
                [to_numpy(o) for o in outputs], expected, tolerance, tolerance, "float64 vs the NumPy reference"
            )


def check_other_channel_count(layer_cls, init_kwargs, layer, input_shapes):
    if len(input_shapes) != 1 or len(input_shapes[0]) != 4:
        return
    shape = list(input_shapes[0])
    axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else 3
    shape[axis] += 1
    wider = layer_cls(**init_kwargs)
    try:
        build_model(wider, [tuple(shape)])
    except ValueError as error:  # no layer of these arguments takes that many channels (GroupNorm's groups)
        assert layer_cls.__name__ in str(error), error
        return
    x = random_inputs([tuple(shape)])[0]
    same_weights = [tuple(w.shape) for w in wider.weights] == [tuple(w.shape) for w in layer.weights]
    try:
        out = layer(x)
    except ValueError as error:
        assert layer.name in str(error), error
    else:
        assert same_weights, f"{layer_cls.__name__} built for {input_shapes[0]} accepted {tuple(shape)}"
        assert tuple(out.shape) == tuple(shape)


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape=None,
    reference_fn=None,
    tmp_path=None,
    run_training=True,
    run_dtype_policies=True,
    frozen_ok=(),
    dynamic_input_shape=None,
):
    """The whole battery for one layer configuration. See the module docstring."""
    input_shapes = as_list(input_shape)
    expected = as_list(expected_output_shape or input_shape)
    layer, model = check_shapes(layer_cls, init_kwargs, input_shapes, expected)
    check_config_round_trip(layer, model, input_shapes)
    if tmp_path is not None:
        check_keras_file(model, input_shapes, tmp_path)
    if reference_fn is not None:
        check_reference(layer, model, input_shapes, reference_fn)  # leaves random (not identity) weights
    if dynamic_input_shape is not None:
        check_unknown_sizes(layer_cls, init_kwargs, model, as_list(dynamic_input_shape), input_shapes)
    if run_dtype_policies:
        check_dtype_policies(layer_cls, init_kwargs, model, input_shapes)
        check_float64(layer_cls, init_kwargs, model, input_shapes, reference_fn)
    check_other_channel_count(layer_cls, init_kwargs, layer, input_shapes)
    # On PyTorch, jit_compile=True is torch.compile: 10-40 s per configuration on a cold cache. Its
    # channels_first graph differs from channels_last by transposes only, so CI compiles channels_last.
    if run_training and not (BACKEND == "torch" and init_kwargs.get("data_format") == "channels_first"):
        check_jit_training_step(layer, model, input_shapes, frozen_ok)
    return layer, model


def gradients(model, inputs, loss_fn, variables):
    """d loss / d variables with the backend's own autodiff; zeros where the loss does not depend on one."""
    if BACKEND == "jax":
        import jax

        trainable = list(model.trainable_variables)
        index = [next(i for i, t in enumerate(trainable) if t is v) for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_of(values):
            outputs, _ = model.stateless_call(values, non_trainable, inputs, training=True)
            return loss_fn(outputs)

        grads = jax.jit(jax.grad(loss_of))([v.value for v in trainable])
        return [np.asarray(grads[i]) for i in index]
    if BACKEND == "torch":
        import torch

        loss = loss_fn(model(inputs, training=True))
        grads = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
        return [np.zeros(tuple(v.shape)) if g is None else to_numpy(g) for v, g in zip(variables, grads)]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn(model(inputs, training=True))
    grads = tape.gradient(loss, variables)
    return [np.zeros(tuple(v.shape)) if g is None else np.asarray(g) for v, g in zip(variables, grads)]
