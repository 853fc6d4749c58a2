"""Distributed fine-tuning: CBAM in MobileNetV2, trained data-parallel on N devices.

The engine follows the backend, through `keras_attention.distribute`:
`tf.distribute.MirroredStrategy` on TensorFlow (Keras 3, or tf_keras with
TF_USE_LEGACY_KERAS=1), `keras.distribution.DataParallel` on JAX. The model is
built, compiled, trained and saved inside the engine's scope with a plain
`model.fit`; the batch size given to `fit` is the global batch (per-replica
batch x replicas), which the engine splits evenly across the replicas.

The recipe: `attach()` CBAM to the backbone (attention starts as the identity),
a new head; with pretrained weights, first train only attention and head on the
frozen backbone, then unfreeze everything but BatchNorm and fine-tune with a
small learning rate. Without pretrained weights (the default: no download)
there is nothing to protect, so everything trains in one stage, BatchNorm
included, with global-batch statistics (`--batchnorm sync`).

    python examples/distributed_finetune.py                    # every GPU (or 1 CPU)
    python examples/distributed_finetune.py --cpu-devices 2    # 2 logical CPUs, no GPU needed
    python examples/distributed_finetune.py --weights imagenet --size 96   # the real recipe
    KERAS_BACKEND=jax python examples/distributed_finetune.py --cpu-devices 2
    python examples/distributed_finetune.py --fast --cpu-devices 2          # a < 1 min smoke run
"""

import argparse
import os
import tempfile
import time

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--devices",
        type=int,
        default=None,
        help="replicas to use (default: every GPU, every TPU core on JAX, else every CPU device)",
    )
    parser.add_argument(
        "--multi-worker",
        action="store_true",
        help="several machines: TensorFlow's MultiWorkerMirroredStrategy (cluster from TF_CONFIG), "
        "or on JAX keras.distribution.initialize() (from KERAS_DISTRIBUTION_* variables)",
    )
    parser.add_argument(
        "--tpu",
        default=None,
        help='TensorFlow: a TPUStrategy on this TPU ("" or "local" on a TPU VM); JAX finds TPU cores by itself',
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="split the CPU into this many logical devices first (to try without accelerators)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="per-replica batch size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for the global batch (default 2e-3, fine-tuning stage 1e-4)",
    )
    parser.add_argument("--size", type=int, default=32, help="image size (digits are upsampled from 8x8)")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    parser.add_argument(
        "--weights", default=None, help='backbone weights: None (default), "imagenet" (downloads) or a weights file'
    )
    parser.add_argument(
        "--batchnorm",
        choices=("frozen", "sync", "local"),
        default=None,
        help="frozen: inference mode (default with --weights); sync: global-batch statistics "
        "(default without); local: each replica's own statistics (Keras' default)",
    )
    parser.add_argument(
        "--kernel-size", type=int, default=None, help="CBAM spatial kernel (default 7, as in the paper; 3 with --fast)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a smoke run of the same code: the backbone through block_5 (3 of its 10 residual "
        "blocks), 4 steps, 1 epoch, no validation during training",
    )
    parser.add_argument("--out", default=None, help="where to write model.keras (default: a temp dir)")
    return parser.parse_args(argv)


def make_engine(args, distribute, backend, keras):
    """The data-parallel engine the arguments ask for, and whether this process is the chief."""
    if args.tpu is not None and backend == "tensorflow":
        import tensorflow as tf

        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=args.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return distribute.data_parallel(strategy=tf.distribute.TPUStrategy(resolver)), True
    if args.multi_worker and backend == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
        resolver = strategy.cluster_resolver
        task_type, task_id = resolver.task_type, resolver.task_id
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief)
        return distribute.data_parallel(strategy=strategy), chief
    if args.multi_worker:  # JAX: every process runs this script
        import jax

        keras.distribution.initialize()
        return distribute.data_parallel(), jax.process_index() == 0
    return distribute.data_parallel(args.devices), True


def main(argv=None):
    args = parse_args(argv)
    # Logical devices exist only if configured before the backend initialises.
    from keras_attention import distribute

    if args.cpu_devices:
        distribute.split_cpu(args.cpu_devices)

    from keras_attention.backbones import attach, freeze_backbone, unfreeze
    from keras_attention.backend import BACKEND, IS_LEGACY, keras
    from keras_attention.data import digits

    engine, chief = make_engine(args, distribute, BACKEND, keras)
    global_batch = engine.global_batch_size(args.batch_size)
    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__} on {BACKEND}"
    print(f"{mode}: {engine.name} {type(engine.engine).__name__}, {engine.num_replicas} replica(s) {engine.devices}")
    print(f"global batch {global_batch} = {engine.num_replicas} replica(s) x {args.batch_size}")
    if engine.num_replicas == 1:
        print("(one device: use --cpu-devices 2 to try data parallelism without accelerators)")

    pretrained = args.weights not in (None, "None", "none")
    batchnorm = args.batchnorm or ("frozen" if pretrained else "sync")
    epochs = 1 if args.fast else args.epochs
    kernel_size = args.kernel_size or (3 if args.fast else 7)
    (x_train, y_train), (x_test, y_test) = digits(size=args.size, channels=3)
    if args.fast:
        x_train, y_train = x_train[: 4 * global_batch], y_train[: 4 * global_batch]
        x_test, y_test = x_test[:128], y_test[:128]
    # Drop the ragged last training batch so every step splits evenly across the
    # replicas (and has the same shapes: XLA, TPUs); the test set only needs to
    # split evenly (JAX's DataParallel shards every batch across the devices).
    n = len(x_train) // global_batch * global_batch
    x_train, y_train = x_train[:n], y_train[:n]
    n = len(x_test) // engine.num_replicas * engine.num_replicas
    x_test, y_test = x_test[:n], y_test[:n]
    print(f"{len(x_train)} training and {len(x_test)} test images ({args.size}x{args.size})")

    def compile_model(model, lr):
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )

    def fit(model, epochs):
        start = time.time()
        model.fit(
            x_train,
            y_train,
            batch_size=global_batch,
            epochs=epochs,
            validation_data=None if args.fast else (x_test, y_test),
            verbose=2,
        )
        return time.time() - start

    keras.utils.set_random_seed(0)
    with engine.scope():  # variables, optimizer state, training and saving under the engine
        backbone = keras.applications.MobileNetV2(
            input_shape=(args.size, args.size, 3),
            alpha=args.alpha,
            include_top=False,
            weights=args.weights if pretrained else None,
        )
        if args.fast:
            truncated = backbone.get_layer("block_5_add").output
            backbone = keras.Model(backbone.input, truncated, name="mobilenet_v2_to_block_5")
        backbone = attach(backbone, "cbam", kernel_size=kernel_size)
        inputs = keras.Input((args.size, args.size, 3))
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)  # MobileNetV2's [-1, 1]
        x = keras.layers.GlobalAveragePooling2D()(backbone(x))
        model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="mobilenet_v2_cbam")

        if not pretrained:
            # Keras Applications' BatchNorm averages its statistics with momentum 0.999,
            # too slow for a few hundred steps from scratch: inference would still use
            # nearly the initial statistics (and predict one class).
            for layer in model._flatten_layers():
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = 0.9
        if batchnorm == "sync":
            switched = distribute.synchronize_batchnorm(model)
            print(
                f"BatchNorm: global-batch statistics ({switched} layers synchronized"
                + (")" if engine.name == distribute.TF_ENGINE else "; DataParallel's are global already)")
            )
        else:
            print(f"BatchNorm: {batchnorm}")

        seconds = 0.0
        if pretrained:
            print("stage 1: attention layers and head on the frozen backbone")
            freeze_backbone(model, keep_trainable=["head"])
            compile_model(model, args.lr or 2e-3)
            seconds += fit(model, epochs)
            print("stage 2: everything but BatchNorm, small learning rate")
            unfreeze(model, keep_batchnorm_frozen=(batchnorm == "frozen"))
            compile_model(model, (args.lr or 2e-3) / 20)
            seconds += fit(model, epochs)
        else:
            print("one stage: every layer (no pretrained weights to protect)")
            if batchnorm == "frozen":
                unfreeze(model, keep_batchnorm_frozen=True)
            compile_model(model, args.lr or 2e-3)
            seconds += fit(model, epochs)
        print(f"trained in {seconds:.1f}s")
        _, accuracy = model.evaluate(x_test, y_test, batch_size=global_batch, verbose=0)
        distributed_out = np.asarray(model.predict(x_test, batch_size=global_batch, verbose=0))

        # Every worker saves (TensorFlow's multi-worker advice); only the chief's file is kept.
        out = args.out if (args.out and chief) else tempfile.mkdtemp(prefix="keras_attention_distributed_")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "model.keras")
        model.save(path)
    if not chief:
        return accuracy

    # Reload on one device, outside the engine, as inference or a single-GPU job would.
    reloaded = keras.models.load_model(path, safe_mode=True)
    reloaded_out = np.asarray(reloaded.predict(x_test, batch_size=32, verbose=0))
    diff = float(np.max(np.abs(reloaded_out - distributed_out)))
    print(f"test accuracy: {accuracy:.4f}")
    print(f"saved {path}; reloaded on one device (safe_mode=True): max |output difference| {diff:.2e}")
    if not diff <= 1e-5 * max(1.0, float(np.max(np.abs(distributed_out)))):
        raise SystemExit("the reloaded model computes something else")
    return accuracy


if __name__ == "__main__":
    main()
