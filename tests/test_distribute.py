"""Data parallelism: 2 replicas train exactly like one device with the same global batch.

Logical devices must be configured before TensorFlow or JAX initialise, and
pytest's process has initialised them already, so every distributed check runs
in one subprocess per mode (this file run as a script: `python
tests/test_distribute.py OUT.json`), which splits the CPU into 2 devices with
`keras_attention.distribute.split_cpu(2)` and writes its measurements as JSON.
The tests below read them.

Engines: Keras 3 on TensorFlow and tf_keras use `tf.distribute.MirroredStrategy`
over the 2 logical CPUs; Keras 3 on JAX uses `keras.distribution.DataParallel`.
Each model is trained for a few plain-SGD steps (no momentum, no dropout, no
shuffling) twice from the same initial weights: on one device without any
strategy, and on 2 replicas with the same global batch (each replica gets
half). All weights, BatchNorm moving statistics included, must agree to float
rounding.

BatchNorm in training mode is where replicas can legitimately differ: under
tf.distribute each replica normalises with the statistics of its own half
batch. The BN model is therefore trained three ways: unsynchronized on 2
replicas (must differ from one device on TensorFlow: the control that shows the
comparison can fail), after `synchronize_batchnorm()` (must agree with the same
synchronized model on one device), and — on JAX — as is, since DataParallel
compiles one program over the global batch.

`attach(MobileNetV2(alpha=0.35), "cbam")` is trained as in the fine-tuning
recipe's first stage: backbone and its BatchNorm frozen (moving statistics
calibrated on the data, as a pretrained backbone's would be), attention layers
and a new head trained, in float64 (in float32 the replicas' rounding can flip a
ReLU6 of the backbone, machine-dependently). Models trained on 2 replicas are saved as `.keras` and
reloaded on one device. Each run also records a noise floor: the one-device
run repeated with the examples of each batch reordered (only rounding changes);
the attention CNN's replicas must agree within 10x of it. On every engine a
planted fault (the replicas' learning rate 5 % larger) must fail the comparison.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_attention.backend import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_REPLICAS = 2
GLOBAL_BATCH = 8
STEPS = 3
# float32 rounding: the replicas sum two half-batch gradients where one device
# reduces the whole batch, in another order. The same bar for the float64 run.
ATOL = 1e-6
RTOL = 1e-5


# ----------------------------------------------------------------------------
# The worker: runs in its own process (see the module docstring).
# ----------------------------------------------------------------------------


def _worker(out_path):  # pragma: no cover - runs in a subprocess
    import contextlib
    import tempfile

    from keras_attention import distribute

    devices = distribute.split_cpu(N_REPLICAS)

    import keras_attention as ka
    from keras_attention.backbones import attach, freeze_backbone
    from keras_attention.backend import BACKEND, IS_LEGACY, global_dtype_policy_name, keras, set_global_dtype_policy

    results = {"devices": devices, "mode": "tf_keras" if IS_LEGACY else f"keras3-{BACKEND}"}
    engine = distribute.data_parallel(N_REPLICAS)
    results["engine"] = engine.name
    results["engine_class"] = type(engine.engine).__name__
    results["num_replicas"] = engine.num_replicas
    layers = keras.layers

    def cnn():
        """Every channel/spatial attention layer, no BatchNorm.

        Attention before the ReLU, as CBAM sits in ResNet (after a ReLU the
        pooled descriptors are all positive and a random channel MLP can start
        dead). The later layers start as the identity, as `attach()` inserts
        them: six gates of about 0.5 in a row would fade the signal to nothing.
        """
        inputs = keras.Input((16, 16, 3))
        x = layers.Conv2D(16, 3, padding="same")(inputs)
        x = layers.ReLU()(ka.CBAM(reduction=4, kernel_size=3)(x))
        x = layers.Conv2D(32, 3, strides=2, padding="same")(x)
        identity = {"start_as_identity": True}
        x = ka.SqueezeExcitation(reduction=4, **identity)(x)
        x = ka.EfficientChannelAttention(**identity)(x)
        x = ka.ChannelAttention(reduction=4, **identity)(x)
        x = ka.SpatialAttention(kernel_size=3, **identity)(x)
        x = ka.CBAM(reduction=4, kernel_size=3, arrangement="parallel", **identity)(x)
        x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
        return keras.Model(inputs, layers.Dense(5)(x), name="cnn")

    def bn_model():
        """BatchNorm at the top level and nested in our layers (CBAM's spatial BN, ThunderNet)."""
        inputs = keras.Input((16, 16, 3))
        x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
        x = layers.ReLU()(layers.BatchNormalization()(x))
        c4 = ka.CBAM(reduction=4, kernel_size=3, use_batchnorm=True)(x)
        c5 = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(c4)
        cem = ka.ContextEnhancement(filters=12)([c4, c5])
        rpn, objectness, deltas = ka.LightRPNHead(num_anchors=2, filters=8)(cem)
        sam = ka.RPNGuidedSpatialAttention()([cem, rpn])
        pooled = [layers.GlobalAveragePooling2D()(t) for t in (sam, objectness, deltas)]
        outputs = layers.Dense(5)(layers.Concatenate()(pooled))
        return keras.Model(inputs, outputs, name="bn_model")

    def mobilenet():
        backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
        # kernel_size=3: XLA on CPU compiles the gradient of CBAM's 7x7 two-channel
        # convolution slowly (about 2 s a layer), which the JAX run cannot afford.
        backbone = attach(backbone, "cbam", kernel_size=3)
        x = layers.GlobalAveragePooling2D()(backbone.output)
        head = layers.Dense(5, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01, seed=1), name="head")
        return keras.Model(backbone.input, head(x), name="mobilenet_v2_cbam")

    rng = np.random.default_rng(0)
    data = {
        16: rng.normal(size=(GLOBAL_BATCH * STEPS, 16, 16, 3)).astype("float32"),
        32: rng.normal(size=(GLOBAL_BATCH * STEPS, 32, 32, 3)).astype("float32"),
    }
    labels = rng.integers(0, 5, size=GLOBAL_BATCH * STEPS).astype("int32")

    def inputs(size):
        return data[size].astype(keras.backend.floatx())

    def permuted(size):
        """The same batches, each in another order: only float rounding changes."""
        order = np.concatenate([rng.permutation(GLOBAL_BATCH) + GLOBAL_BATCH * i for i in range(STEPS)])
        return inputs(size)[order], labels[order]

    def train(build, initial, size, lr, engine=None, sync=False, recipe=False, model=None, lr_scale=1.0):
        """Trains `model` (default: a new `build()` in the engine's scope) from `initial`."""
        scope = engine.scope() if engine is not None else contextlib.nullcontext()
        x, y = inputs(size), labels
        with scope:
            model = build() if model is None else model
            model.set_weights(initial)
            if recipe:  # the fine-tuning recipe's first stage: attention layers and head train
                freeze_backbone(model, keep_trainable=["head"])
            switched = distribute.synchronize_batchnorm(model) if sync else 0
            model.compile(
                optimizer=keras.optimizers.SGD(lr * lr_scale),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            start = time.time()
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
            seconds = time.time() - start
        weights = [np.asarray(w, dtype="float64") for w in model.get_weights()]
        return model, weights, seconds, switched

    def max_diff(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

    def worst(model, a, b):
        """The weight that differs most between a and b, for the report."""
        diffs = [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]
        i = int(np.argmax(diffs))
        return getattr(model.weights[i], "path", None) or model.weights[i].name

    def max_violation(a, b):
        """max of |a - b| / (ATOL + RTOL |b|): <= 1 where np.allclose holds."""
        return max(float(np.max(np.abs(x - y) / (ATOL + RTOL * np.abs(y)))) for x, y in zip(a, b))

    def calibrate_batchnorm(model, x):
        """Moving statistics := the data's batch statistics, as in a pretrained backbone.

        Without it a random-initialised deep network whose BatchNorm is frozen
        (moving mean 0, variance 1) fades its activations to nearly nothing,
        so its backbone would hardly train and agree trivially.
        """
        bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
        probe = keras.Model(model.input, [layer.input for layer in bns])
        if BACKEND == "jax":  # one compiled forward pass instead of hundreds of eager ops
            import jax

            forward = jax.jit(lambda tv, ntv, x: probe.stateless_call(tv, ntv, x, training=True)[0])
            outputs = forward(
                [v.value for v in probe.trainable_variables], [v.value for v in probe.non_trainable_variables], x
            )
        else:
            outputs = probe(x, training=True)
        for layer, t in zip(bns, outputs):
            t = np.asarray(t, "float64")
            axes = tuple(range(t.ndim - 1))
            layer.moving_mean.assign(t.mean(axis=axes).astype(keras.backend.floatx()))
            layer.moving_variance.assign(t.var(axis=axes).astype(keras.backend.floatx()))

    @contextlib.contextmanager
    def precision(floatx):
        """Models built and trained within it compute in `floatx` (on JAX: 64-bit arrays enabled)."""
        previous = keras.backend.floatx(), global_dtype_policy_name()
        if BACKEND == "jax":
            import jax

            jax.config.update("jax_enable_x64", floatx == "float64")
        keras.backend.set_floatx(floatx)  # the inputs' dtype (keras.Input's default)
        set_global_dtype_policy(floatx)  # the layers' (Keras 3 caches the policy floatx gave)
        try:
            yield
        finally:
            keras.backend.set_floatx(previous[0])
            set_global_dtype_policy(previous[1])
            if BACKEND == "jax":
                jax.config.update("jax_enable_x64", False)

    def compare(build, size, lr, variants, recipe=False, floor=True, floatx="float32"):
        """One-device reference, then each 2-replica variant, from the same initial weights."""
        with precision(floatx):
            entry = _compare(build, size, lr, variants, recipe, floor)
        entry["floatx"] = floatx
        return entry

    def _compare(build, size, lr, variants, recipe, floor):
        start = time.time()
        keras.utils.set_random_seed(0)
        model = build()
        if recipe:
            calibrate_batchnorm(model, inputs(size))
        initial = [np.asarray(w) for w in model.get_weights()]
        initial64 = [np.asarray(w, "float64") for w in initial]
        one, reference, seconds, _ = train(build, initial, size, lr, recipe=recipe, model=model)
        entry = {"one_device_seconds": round(seconds, 2), "models": {}}
        if floor:  # the float noise floor of one device, reusing its compiled step
            one.set_weights(initial)
            one.fit(*permuted(size), batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
            floor_weights = [np.asarray(w, "float64") for w in one.get_weights()]
            entry["one_device_permuted_max_abs_diff"] = max_diff(floor_weights, reference)
            entry["one_device_permuted_worst"] = worst(one, floor_weights, reference)
        references = {False: reference}
        for label, kwargs in variants:
            sync = kwargs.get("sync", False)
            if sync not in references:
                # The same synchronized model on one device. On tf_keras this is not
                # the plain model's arithmetic: synchronized BN cannot use the fused
                # kernel, whose moving variance is the unbiased (n - 1) one.
                references[sync] = train(build, initial, size, lr, recipe=recipe, sync=True)[1]
            model, weights, seconds, switched = train(build, initial, size, lr, engine=engine, recipe=recipe, **kwargs)
            entry[label] = {
                "max_abs_diff": max_diff(weights, references[sync]),
                "max_violation": max_violation(weights, references[sync]),
                "max_abs_update": max_diff(weights, initial64),
                "worst": worst(model, weights, references[sync]),
                # how many weight tensors training moved by more than 100 x ATOL
                "tensors_moved": sum(int(np.max(np.abs(w - w0)) > 100 * ATOL) for w, w0 in zip(weights, initial64)),
                "tensors_trainable": len(model.trainable_weights),
                "tensors": len(weights),
                "batchnorm_synchronized": switched,
                "seconds": round(seconds, 2),
            }
            if sync:
                entry[label]["max_abs_diff_vs_plain_one_device"] = max_diff(weights, reference)
                entry[label]["worst_vs_plain_one_device"] = worst(model, weights, reference)
            entry["models"][label] = model
        entry["total_seconds"] = round(time.time() - start, 2)
        return entry

    t0 = time.time()
    bn_variants = [("replicas", {})]
    if BACKEND != "jax":  # JAX's DataParallel needs (and accepts) no synchronisation
        bn_variants.append(("replicas_sync", {"sync": True}))
    entries = {
        # "planted_fault": the replicas with a 5 % larger learning rate, which the comparison must catch.
        "cnn": compare(cnn, 16, 0.5, [("replicas", {}), ("planted_fault", {"lr_scale": 1.05})]),
        "bn": compare(bn_model, 16, 0.1, bn_variants),
        # The fine-tuning recipe's first stage (backbone and its BatchNorm frozen,
        # attention layers and head trained). Training the whole random-initialised
        # backbone is too ill-conditioned for a float comparison: on one device
        # alone, reordering each batch moves its weights by ~2% of their update
        # within 3 steps (see docs/distribution.md). Computed in float64, held to
        # the float32 bar: in float32 the replicas' rounding alone can flip one of
        # the backbone's ReLU6 (an activation within an ulp of 0 or 6), which moves
        # every attention weight upstream of it by ~1% of its update; whether a run
        # flips one depends on the CPU and the libraries (see docs/distribution.md).
        "mobilenet": compare(mobilenet, 32, 0.01, [("recipe", {})], recipe=True, floatx="float64"),
    }

    # Save a distributed model as .keras, reload on one device (no strategy), compare.
    saved = {}
    tmp = tempfile.mkdtemp(prefix="ka_distribute_")
    targets = [("cnn", cnn, "replicas", 16), ("bn", bn_model, bn_variants[-1][0], 16)]
    for key, build, label, size in targets:
        model = entries[key]["models"][label]
        x = data[size][:6]
        with engine.scope():
            distributed_out = np.asarray(model.predict(x, batch_size=6, verbose=0))
            path = os.path.join(tmp, f"{key}.keras")
            model.save(path)
        reloaded = keras.models.load_model(path, safe_mode=True)
        reloaded_out = np.asarray(reloaded.predict(x, batch_size=6, verbose=0))
        one_device = build()
        one_device.set_weights(model.get_weights())
        one_device_out = np.asarray(one_device.predict(x, batch_size=6, verbose=0))
        saved[key] = {
            "weights_bitwise_equal": all(
                np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(model.get_weights(), reloaded.get_weights())
            ),
            "outputs_equal_one_device_copy": bool(np.array_equal(one_device_out, reloaded_out)),
            "outputs_max_abs_diff_distributed": float(np.max(np.abs(distributed_out - reloaded_out))),
            "outputs_max_abs": float(np.max(np.abs(reloaded_out))),
            "attention_layers": sum(
                1
                for layer in reloaded._flatten_layers(include_self=False)
                if type(layer).__module__.startswith("keras_attention")
            ),
            "synchronized_batchnorm_after_reload": sum(
                1
                for layer in reloaded._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
            ),
        }
    for entry in entries.values():
        del entry["models"]
    results.update(entries)
    results["saved"] = saved
    results["seconds"] = round(time.time() - t0, 2)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


# ----------------------------------------------------------------------------
# The tests: one subprocess per mode, many assertions on its measurements.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tmp_path_factory, worker_id):
    """The worker subprocess's results, computed once per test run: under pytest-xdist the first worker
    to need them runs it while the other waits on a lock, then reads the same file."""
    import filelock

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if worker_id != "master" else shared  # the xdist workers' common folder
    out = shared / "distribute_results.json"
    with filelock.FileLock(str(out) + ".lock"):
        if not out.exists():
            _run_worker(out)
    results = json.loads(out.read_text())
    print(json.dumps(results, indent=1))  # shown with -s: the numbers docs/distribution.md quotes
    return results


def _run_worker(out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    partial = out.with_suffix(".partial.json")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(partial)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    results = json.loads(partial.read_text())
    results["subprocess_seconds"] = round(time.time() - start, 1)
    out.write_text(json.dumps(results))


@pytest.mark.slow
def test_engine_matches_backend(measured):
    from keras_attention.backend import BACKEND

    assert measured["num_replicas"] == N_REPLICAS
    assert len(measured["devices"]) == N_REPLICAS
    if BACKEND == "jax":
        assert (measured["engine"], measured["engine_class"]) == ("keras.distribution", "DataParallel")
    else:
        assert (measured["engine"], measured["engine_class"]) == ("tf.distribute", "MirroredStrategy")


def _assert_agrees(entry):
    # Training moved most weight tensors, and far more than the replicas disagree.
    assert entry["tensors_moved"] >= 0.75 * entry["tensors_trainable"], entry
    assert entry["max_abs_update"] > 1e-3, entry
    assert entry["max_violation"] <= 1.0, entry
    assert entry["max_abs_diff"] < entry["max_abs_update"] * 1e-3, entry


@pytest.mark.slow
def test_attention_cnn_two_replicas_equal_one_device(measured):
    entry = measured["cnn"]
    _assert_agrees(entry["replicas"])
    # At the noise floor: within 10x of what reordering each batch on one device changes.
    floor = entry["one_device_permuted_max_abs_diff"]
    assert entry["replicas"]["max_abs_diff"] <= 10 * floor + 1e-7, entry


@pytest.mark.slow
def test_the_comparison_catches_a_planted_fault(measured):
    """The control on every engine: replicas trained with a 5 % larger learning rate fail the check."""
    entry = measured["cnn"]["planted_fault"]
    with pytest.raises(AssertionError):
        _assert_agrees(entry)
    assert entry["max_abs_diff"] > 1e-2 * entry["max_abs_update"], entry


@pytest.mark.slow
def test_batchnorm_two_replicas_equal_one_device(measured):
    """Top-level BN, CBAM's nested spatial BN, LightRPNHead's two and SAM's one, in training mode."""
    from keras_attention.backend import BACKEND

    if BACKEND == "jax":
        # One SPMD program over the global batch: the statistics are global as is.
        entry = measured["bn"]["replicas"]
        assert entry["batchnorm_synchronized"] == 0
    else:
        entry = measured["bn"]["replicas_sync"]
        assert entry["batchnorm_synchronized"] == 5
    _assert_agrees(entry)


@pytest.mark.slow
def test_unsynchronized_batchnorm_differs_under_tf_distribute(measured):
    """The control: per-replica statistics give other weights, so the comparison can fail."""
    from keras_attention.backend import BACKEND

    if BACKEND == "jax":
        pytest.skip("keras.distribution.DataParallel computes global-batch statistics")
    entry = measured["bn"]["replicas"]
    assert entry["batchnorm_synchronized"] == 0
    assert entry["max_violation"] > 100, entry
    assert entry["max_abs_diff"] > 100 * measured["bn"]["replicas_sync"]["max_abs_diff"], entry


@pytest.mark.slow
def test_attached_mobilenet_two_replicas_equal_one_device(measured):
    """attach(MobileNetV2(alpha=0.35), "cbam") + head: attention and head trained, backbone frozen."""
    entry = measured["mobilenet"]["recipe"]
    assert entry["tensors_trainable"] == 10 * 5 + 2  # 10 CBAMs (4 MLP + 1 conv tensors) and the head
    _assert_agrees(entry)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["cnn", "bn"])
def test_distributed_model_reloads_on_one_device(measured, key):
    from keras_attention.backend import BACKEND, IS_LEGACY

    entry = measured["saved"][key]
    assert entry["attention_layers"] >= 3, entry
    assert entry["weights_bitwise_equal"], entry
    assert entry["outputs_equal_one_device_copy"], entry
    assert entry["outputs_max_abs_diff_distributed"] <= 1e-6 * max(1.0, entry["outputs_max_abs"]), entry
    if key == "bn" and BACKEND != "jax":
        # Keras 3 saves `synchronized` in the top-level layer's config; tf_keras
        # saves it nowhere (its get_config leaves it out): call
        # synchronize_batchnorm() again after loading, as for nested layers.
        assert entry["synchronized_batchnorm_after_reload"] == (0 if IS_LEGACY else 1)


TORCH = BACKEND == "torch"
NOT_ON_TORCH = pytest.mark.skipif(TORCH, reason="Keras 3.15 has no keras.distribution for PyTorch: see the next test")


@pytest.mark.skipif(not TORCH, reason="the PyTorch backend's refusal")
def test_torch_backend_names_the_way_out():
    from keras_attention import distribute

    with pytest.raises(
        RuntimeError, match=r"supports the TensorFlow and JAX backends; Keras is running on 'torch'.*DDP"
    ):
        distribute.data_parallel()


@NOT_ON_TORCH
def test_data_parallel_in_this_process():
    """No split: the engine still builds, over the one CPU device pytest's process has."""
    from keras_attention import distribute
    from keras_attention.backend import BACKEND

    engine = distribute.data_parallel(1)
    assert engine.num_replicas == 1 and len(engine.devices) == 1
    assert engine.global_batch_size(16) == 16
    assert engine.name == ("keras.distribution" if BACKEND == "jax" else "tf.distribute")
    assert engine.name in repr(engine)
    with pytest.raises(ValueError, match="asked for 64 devices"):
        distribute.data_parallel(64)
    with pytest.raises(ValueError, match="list of device names or a count"):
        distribute.data_parallel("gpu:0")
    with pytest.raises(ValueError, match=r"data_parallel: no device '/gpu:7' on this machine; it has \["):
        distribute.data_parallel(["/gpu:7"])
    with pytest.raises(ValueError, match="`devices` is an empty list"):
        distribute.data_parallel([])
    assert len(distribute.data_parallel(["cpu:0"]).devices) == 1  # control: a device it has
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="needs the TensorFlow backend"):
            distribute.data_parallel(strategy=object())
    else:
        import tensorflow as tf

        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        wrapped = distribute.data_parallel(strategy=strategy)
        assert wrapped.engine is strategy and wrapped.num_replicas == 1
        assert len(wrapped.devices) == 1 and "CPU:0" in wrapped.devices[0].upper()
        with pytest.raises(ValueError, match="not both"):
            distribute.data_parallel(1, strategy=strategy)


@NOT_ON_TORCH
def test_split_cpu_too_late_explains():
    from keras_attention import distribute

    distribute.data_parallel(1)  # the devices are initialised now
    before = os.environ.get("XLA_FLAGS")
    with pytest.raises(RuntimeError, match=r"already initialised 1 CPU device\(s\); call split_cpu\(3\)"):
        distribute.split_cpu(3)
    assert os.environ.get("XLA_FLAGS") == before  # nothing leaks into later subprocesses
    with pytest.raises(ValueError, match=">= 1"):
        distribute.split_cpu(0)


@NOT_ON_TORCH
def test_synchronize_batchnorm_on_one_device():
    """Every BN, nested ones included, is switched; on one device it computes what plain BN does."""
    import keras_attention as ka
    from keras_attention import distribute
    from keras_attention.backend import BACKEND, IS_LEGACY, keras

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inputs))
        x = ka.CBAM(reduction=2, kernel_size=3, use_batchnorm=True)(x)
        return keras.Model(inputs, x)

    plain, synced = build(), build()
    synced.set_weights(plain.get_weights())
    count = distribute.synchronize_batchnorm(synced)
    bns = [layer for layer in synced._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 2
    if BACKEND == "jax":
        assert count == 0 and not any(layer.synchronized for layer in bns)
    else:
        assert count == 2 and all(layer.synchronized for layer in bns)
        if IS_LEGACY:
            assert not any(layer.fused for layer in bns)
        assert distribute.synchronize_batchnorm(synced) == 0  # idempotent
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(synced(x, training=True)), np.asarray(plain(x, training=True)), rtol=1e-5, atol=1e-5
    )


if __name__ == "__main__":
    _worker(sys.argv[1])
