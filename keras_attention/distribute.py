"""Data-parallel training on several devices, with the engine of the active backend.

The package's layers need nothing special to run on several devices: they
create their variables in `build()` and use no op that leaves a replica
context, so they train under TensorFlow's `tf.distribute` strategies (Keras 3
on TensorFlow, and tf_keras) and under Keras 3's `keras.distribution` on JAX
with a plain `model.fit`. This module only saves the few lines that differ
between the two engines:

- `data_parallel(devices)`: a `tf.distribute.MirroredStrategy` on TensorFlow,
  a `keras.distribution.DataParallel` on JAX, behind one `scope()` and one
  `num_replicas`. Build, compile, fit and save inside `scope()`; the batch size
  given to `fit` is the global batch, split evenly across the replicas.
- `split_cpu(n)`: n logical CPU devices, to try all this on a laptop or in CI.
- `synchronize_batchnorm(model)`: global-batch BatchNorm statistics under
  `tf.distribute` (JAX's DataParallel computes them over the global batch
  already).

Example:
>>> from keras_attention import distribute
>>> engine = distribute.data_parallel()  # every GPU (or TPU core on JAX); here, the CPU
>>> with engine.scope():  # variables are created in the scope
...     model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
...     model.compile(optimizer="sgd", loss="mse")
>>> x, y = np.zeros((64, 8)), np.zeros((64, 1))
>>> history = model.fit(x, y, batch_size=32 * engine.num_replicas, verbose=0)
"""

import os
import re
import warnings

from keras_attention.backend import BACKEND, IS_LEGACY, all_layers, keras

TF_ENGINE = "tf.distribute"
JAX_ENGINE = "keras.distribution"


def engine_name():
    """ "tf.distribute" on TensorFlow (Keras 3 or tf_keras), "keras.distribution" on JAX."""
    if BACKEND == "tensorflow":
        return TF_ENGINE
    if BACKEND == "jax":
        return JAX_ENGINE
    raise RuntimeError(
        f"keras_attention.distribute supports the TensorFlow and JAX backends; Keras is running "
        f"on {BACKEND!r}. Use your backend's own data-parallel tools (e.g. torch DDP)."
    )


class DataParallelEngine:
    """A data-parallel engine: a `tf.distribute.Strategy` or a `keras.distribution.DataParallel`.

    Attributes:
        engine: the underlying strategy or distribution object.
        name: "tf.distribute" or "keras.distribution".
        devices: the replicas' device names.
        num_replicas: how many replicas share each global batch.
    """

    def __init__(self, engine, name, devices, num_replicas):
        self.engine = engine
        self.name = name
        self.devices = list(devices)
        self.num_replicas = int(num_replicas)

    def scope(self):
        """Context manager: build, compile, fit, evaluate and save inside it."""
        return self.engine.scope()

    def global_batch_size(self, per_replica_batch_size):
        """The batch size to give `fit` so each replica sees `per_replica_batch_size` examples."""
        return int(per_replica_batch_size) * self.num_replicas

    def __repr__(self):
        kind = type(self.engine).__name__
        return f"DataParallelEngine({self.name}.{kind}, {self.num_replicas} replicas: {self.devices})"


def _device_key(name):
    """ "/job:localhost/replica:0/task:0/device:GPU:0", "/gpu:0", "gpu:0" -> "gpu:0"."""
    match = re.search(r"(cpu|gpu|tpu):(\d+)$", str(name).lower().replace("device:", ""))
    return f"{match.group(1)}:{match.group(2)}" if match else str(name).lower()


def _select(available, devices, what, known=None):
    """The chosen devices; a list is checked against `known` (every device of this machine)."""
    if devices is None:
        return list(available)
    if isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"data_parallel: asked for {devices} devices; {len(available)} {what} are available: {list(available)}."
            )
        return list(available[:devices])
    if isinstance(devices, str):
        raise ValueError(f"data_parallel: `devices` must be a list of device names or a count; got {devices!r}.")
    devices = list(devices)
    if not devices:
        raise ValueError("data_parallel: `devices` is an empty list; expected device names or a count.")
    known = list(available) if known is None else list(known)
    known_keys = {_device_key(k) for k in known}
    missing = [d for d in devices if _device_key(d) not in known_keys]
    if missing:
        raise ValueError(f"data_parallel: no device {', '.join(map(repr, missing))} on this machine; it has {known}.")
    return devices


def data_parallel(devices=None, strategy=None):
    """The data-parallel engine of the active backend.

    TensorFlow (Keras 3 or tf_keras): a `tf.distribute.MirroredStrategy` over
    `devices`. JAX: a `keras.distribution.DataParallel` over `devices` (with
    several processes, call `keras.distribution.initialize()` first; its
    devices are then every process's).

    Args:
        devices: None (default): every GPU, or every TPU core on JAX; without
            accelerators, every (logical) CPU device — one unless `split_cpu`
            ran. An int n: the first n of those. A list: these devices
            ("/gpu:0", ... for TensorFlow; "gpu:0", ... for JAX).
        strategy: TensorFlow only: an existing `tf.distribute.Strategy` to
            wrap instead (e.g. `MultiWorkerMirroredStrategy()`,
            `TPUStrategy(resolver)`); `devices` must then be None.

    Returns:
        A `DataParallelEngine`; use `with engine.scope():` around building,
        compiling, fitting and saving the model.

    Raises:
        ValueError: more devices asked for than exist, or `strategy` with
            `devices` or on JAX.
        RuntimeError: a backend other than TensorFlow or JAX.

    Example:
    >>> engine = data_parallel()  # or data_parallel(2), data_parallel(["/gpu:0", "/gpu:1"])
    >>> with engine.scope():
    ...     model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    >>> engine.num_replicas >= 1
    True
    """
    name = engine_name()
    if name == TF_ENGINE:
        import tensorflow as tf

        if strategy is not None:
            if devices is not None:
                raise ValueError("data_parallel: pass `devices` or `strategy`, not both.")
            _warn_keras3_multi_worker(strategy)
            replicas = getattr(strategy.extended, "worker_devices", ())  # this worker's
            return DataParallelEngine(strategy, name, replicas, strategy.num_replicas_in_sync)
        available = [d.name for d in tf.config.list_logical_devices("GPU")]
        what = "GPUs"
        if not available:
            available, what = [d.name for d in tf.config.list_logical_devices("CPU")], "CPU devices"
        chosen = _select(available, devices, what, known=[d.name for d in tf.config.list_logical_devices()])
        mirrored = tf.distribute.MirroredStrategy(devices=chosen)
        return DataParallelEngine(mirrored, name, chosen, mirrored.num_replicas_in_sync)

    if strategy is not None:
        raise ValueError(
            "data_parallel: `strategy` is a tf.distribute object and needs the TensorFlow backend; "
            "on JAX pass `devices` (or a keras.distribution object's devices)."
        )
    chosen = _select(keras.distribution.list_devices(), devices, "devices")
    distribution = keras.distribution.DataParallel(devices=chosen)
    return DataParallelEngine(distribution, name, chosen, distribution.num_model_replicas)


def _warn_keras3_multi_worker(strategy):
    """Keras 3's fit fails under MultiWorkerMirroredStrategy with several workers: say so up front."""
    import tensorflow as tf

    if IS_LEGACY or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = sum(len(spec.get(job, ())) for job in ("chief", "worker"))
    if workers > 1:
        warnings.warn(
            "Keras 3's model.fit fails under MultiWorkerMirroredStrategy with several workers "
            '("Attempt to convert a value (PerReplica...) to a Tensor", keras-team/keras#20585). '
            "Train on several machines with tf_keras (TF_USE_LEGACY_KERAS=1) or with Keras 3 on JAX "
            "(keras.distribution.initialize()).",
            stacklevel=3,
        )


def split_cpu(n):
    """Splits the host CPU into `n` logical devices, for data parallelism without accelerators.

    Must run before the backend initialises its devices (before the first
    tensor is created); importing `keras_attention` is fine. On TensorFlow it
    configures n logical CPUs; on JAX it sets the host platform device count.
    The devices share the same cores: this is for checking that a model
    trains identically when split, not for speed.

    Args:
        n: number of logical CPU devices (>= 1).

    Returns:
        The CPU device names of the active backend.

    Raises:
        RuntimeError: the devices were already initialised with another count.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"split_cpu: `n` must be >= 1; got {n}.")
    name = engine_name()
    if name == TF_ENGINE:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        except RuntimeError as error:
            current = tf.config.list_logical_devices("CPU")
            if len(current) != n:
                raise RuntimeError(
                    f"split_cpu: TensorFlow already initialised {len(current)} CPU device(s); call "
                    f"split_cpu({n}) before creating any tensor or model. ({error})"
                ) from None
        return [d.name for d in tf.config.list_logical_devices("CPU")]

    import jax

    flag = f"--xla_force_host_platform_device_count={n}"
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except AttributeError:  # an older JAX without the option: the XLA flag does it
        os.environ["XLA_FLAGS"] = " ".join(
            [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
            + [flag]
        )
    except RuntimeError:  # backends already initialised: the count check below explains
        pass
    count = len(jax.devices("cpu"))
    if count != n:
        raise RuntimeError(
            f"split_cpu: JAX already initialised {count} CPU device(s); call split_cpu({n}) (or set "
            f"XLA_FLAGS={flag}) before the first JAX computation."
        )
    return keras.distribution.list_devices("cpu")


def synchronize_batchnorm(model):
    """Makes every BatchNormalization in `model` use global-batch statistics under tf.distribute.

    Under `tf.distribute`, a BatchNormalization layer in training mode
    normalises with its own replica's batch statistics, so training on N
    replicas differs from training on one device with the same global batch.
    A synchronized layer all-reduces its moments across replicas instead
    (Keras 3's `BatchNormalization(synchronized=True)`, tf_keras's
    `synchronized=True`, formerly `SyncBatchNormalization`): the same numbers
    as one device, for one extra all-reduce per layer.

    This switches it on in place for every BatchNormalization in the model,
    including those nested in this package's layers (`SpatialAttention`'s and
    `CBAM`'s optional BN, `LightRPNHead`'s, `RPNGuidedSpatialAttention`'s) and
    in Keras Applications backbones. Call it before `compile()`. Top-level
    layers save the setting in their config; nested ones do not, so call it
    again after reloading a model you will train further on several replicas.
    Frozen BatchNormalization (`trainable=False`, the fine-tuning recipe) runs
    in inference mode and needs no synchronisation.

    On JAX, `keras.distribution.DataParallel` compiles one program over the
    global batch, whose BatchNorm statistics are already global; Keras 3 does
    not accept `synchronized=True` there, and this function changes nothing.

    Args:
        model: a Keras model (or layer).

    Returns:
        The number of BatchNormalization layers switched.
    """
    if engine_name() == JAX_ENGINE:
        return 0
    count = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            if IS_LEGACY:
                # tf_keras' fused kernel cannot all-reduce: the unfused path has the same variables.
                layer.fused = False
            count += 1
    return count
