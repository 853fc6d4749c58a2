"""The end-to-end demo behind `keras-attention demo` (and `make demo`).

MobileNetV2 (alpha 0.35) gets CBAM through `attach`, is fine-tuned on
scikit-learn's digits (or a folder of images), then fine-tuned again with
quantization-aware training (Keras 3 QAT, or tfmot under tf_keras) and
converted to full-integer int8 TFLite, verified in the LiteRT interpreter and
compared with post-training int8 and with the same backbone without CBAM.
Writes `model.keras`, `model_qat.keras`, `model_int8.tflite` (the QAT file),
`report.json` and `attention.png` into the output folder.

Determinism: the seed fixes data order, initial weights and dropout
(`keras.utils.set_random_seed`), and TensorFlow's op determinism is switched
on, so two CPU runs with the same seed print the same numbers. Not covered:
a different machine or thread count (float sums reorder), or a GPU.
"""

import os
import shutil
import sys
import tempfile
import time

import numpy as np

from keras_attention._checks import check_int
from keras_attention._inputs import IMAGE_EXTENSIONS, images_by_folder
from keras_attention._io import check_folder, write_bytes, write_json
from keras_attention.backend import BACKEND, IS_LEGACY, describe, keras


class ImageSplit:
    """Images and labels as the demo uses them: NumPy arrays in memory, or files streamed with tf.data.

    Streamed splits decode, resize and batch images as training reads them (and
    shuffle the file order every epoch when `shuffle_seed` is given), so a folder
    of any size takes a few batches of memory.
    """

    def __init__(self, images=None, labels=None, paths=None, size=None, shuffle_seed=None):
        self.images, self.labels, self.paths, self.size = images, labels, paths, size
        self.shuffle_seed = shuffle_seed

    def __len__(self):
        return len(self.labels)

    def head(self, n):
        """The first `n` examples, as a split of the same kind."""
        if self.paths is None:
            return ImageSplit(self.images[:n], self.labels[:n])
        return ImageSplit(None, self.labels[:n], self.paths[:n], self.size, self.shuffle_seed)

    def arrays(self, n=None):
        """(images, labels) of the first `n` examples (all when None) as NumPy arrays."""
        if self.paths is None:
            return self.images[:n], self.labels[:n]
        images = np.concatenate([x for x, _ in self.head(n or len(self)).batches(64)])
        return images, self.labels[:n]

    def batches(self, batch_size):
        """(images, labels) NumPy batches in order."""
        if self.paths is None:
            for start in range(0, len(self), batch_size):
                yield self.images[start : start + batch_size], self.labels[start : start + batch_size]
        else:
            yield from self._dataset(batch_size, shuffle=False).as_numpy_iterator()

    def inputs(self, batch_size, training=False):
        """What `fit` and `evaluate` take: `x`, `y`, `batch_size` (arrays) or `x`, a batched dataset."""
        if self.paths is None:
            return {"x": self.images, "y": self.labels, "batch_size": batch_size}
        return {"x": self._dataset(batch_size, shuffle=training)}

    def validation_data(self, batch_size):
        """What `fit(validation_data=...)` takes."""
        return (self.images, self.labels) if self.paths is None else self._dataset(batch_size, shuffle=False)

    def _dataset(self, batch_size, shuffle):
        import tensorflow as tf

        size = self.size

        def load(path, label):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            image = tf.image.resize(image, (size, size), method="bilinear")
            return tf.ensure_shape(image, (size, size, 3)), label

        dataset = tf.data.Dataset.from_tensor_slices((self.paths, self.labels))
        if shuffle and self.shuffle_seed is not None:  # file names only: the buffer holds no images
            dataset = dataset.shuffle(len(self), seed=self.shuffle_seed, reshuffle_each_iteration=True)
        dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load_image_folder(directory, size, validation_split=0.2, seed=0):
    """Images in `directory/<class>/<image>`, split into train and test `ImageSplit`s that stream them.

    Checks up front what a tf.data pipeline would fail on late or silently: a
    missing or empty folder, a single class, unreadable images (each file's
    header and checksums are verified; nothing is decoded or kept in memory).
    """
    from PIL import Image

    if not os.path.isdir(directory):
        raise ValueError(f"demo --data: {directory!r} is not a folder.")
    files = {c: paths for c, paths in images_by_folder(directory).items() if c}  # class sub-folders only
    if not files:
        raise ValueError(
            f"demo --data: no images in {directory!r}; expected one sub-folder per class holding "
            f"{', '.join(IMAGE_EXTENSIONS)} files."
        )
    if len(files) < 2:
        raise ValueError(
            f"demo --data: found one class ({list(files)[0]!r}) in {directory!r}; a classifier needs at least two."
        )
    paths, labels = [], []
    for label, (_, names) in enumerate(sorted(files.items())):
        for path in names:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as error:  # PIL raises several types for broken files
                raise ValueError(f"demo --data: cannot read image {path!r}: {error}") from None
            paths.append(path)
            labels.append(label)
    paths, labels = np.asarray(paths), np.asarray(labels, "int32")
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = max(1, int(round(validation_split * len(labels))))
    test, train = order[:n_test], order[n_test:]
    return (
        ImageSplit(None, labels[train], paths[train], size, shuffle_seed=seed),
        ImageSplit(None, labels[test], paths[test], size),
        sorted(files),
    )


def build_classifier(num_classes, size, weights, attention):
    """MobileNetV2 (alpha 0.35) with a pooled linear head, one flat functional graph; CBAM via `attach`."""
    from keras_attention.backbones import attach

    inputs = keras.Input((size, size, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_minus1_1")(inputs)  # MobileNetV2's range
    trunk = keras.applications.MobileNetV2(input_tensor=scaled, alpha=0.35, include_top=False, weights=weights)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(trunk.output)
    model = keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(pooled), name="mobilenetv2")
    if weights is None:
        # Keras Applications use BatchNorm momentum 0.999, made for long ImageNet runs: after a few
        # epochs from scratch the moving statistics would still be near their initial values.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    if attention:
        model = attach(model, "cbam", where="residual", preserve_outputs=True)
    return model


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def quantization_aware_training(model, data, epochs, batch_size=32, eager=False):
    """The QAT copy of a fine-tuned `model`, calibrated, then trained `epochs` more at a low learning rate.

    `eager`: run the steps op by op (see `train`).
    """
    from keras_attention import quantization

    train_set, test_set = data
    qat = quantization.quantize_model(model)
    if not IS_LEGACY:  # ranges from data before the first step (tfmot's start at [-6, 6])
        quantization.calibrate(qat, train_set.arrays(256)[0])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    qat.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"], run_eagerly=eager)
    _fit(qat, train_set, test_set, batch_size, epochs)
    return qat


def _fit(model, train_set, test_set, batch_size, epochs):
    model.fit(
        **train_set.inputs(batch_size, training=True),
        epochs=epochs,
        validation_data=test_set.validation_data(batch_size),
        # A progress bar in a terminal; one line per epoch in a redirected log (no \r or ANSI escapes).
        verbose=1 if sys.stdout.isatty() else 2,
    )


def _keras_accuracy(model, test_set, batch_size=32):
    return float(model.evaluate(**test_set.inputs(batch_size), verbose=0)[1])


def _accuracy(flatbuffer, test_set):
    from keras_attention import tflite

    correct = sum(int(np.sum(np.argmax(tflite.run(flatbuffer, x)[0], -1) == y)) for x, y in test_set.batches(256))
    return correct / len(test_set)


def train(model, data, epochs, fine_tune_from_imagenet, batch_size=32, eager=False):
    """Fine-tunes `model`; returns its test accuracy.

    `eager`: run the steps op by op. For a smoke run of a few steps that is faster than
    tracing MobileNetV2's training graph (about 20 s per model on two CPU cores).
    """
    train_set, test_set = data
    # XLA pays off on a GPU; on a CPU, compiling MobileNetV2 takes a minute and its steps run slower.
    jit = _has_gpu() and not eager
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    phases = [(epochs, 1e-3)]
    if fine_tune_from_imagenet:
        # Keras' recipe: train the new parts with the pretrained trunk frozen (BatchNorm in
        # inference mode), then unfreeze everything at a lower learning rate.
        from keras_attention.backbones import freeze_backbone, unfreeze

        first = max(1, epochs // 2)
        freeze_backbone(model, keep_trainable=["logits"])  # the new head trains too
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"], jit_compile=jit, run_eagerly=eager)
        _fit(model, train_set, test_set, batch_size, first)
        unfreeze(model)
        phases = [(epochs - first, 1e-4)] if epochs > first else []
    for phase_epochs, learning_rate in phases:
        model.compile(
            keras.optimizers.Adam(learning_rate), loss, metrics=["accuracy"], jit_compile=jit, run_eagerly=eager
        )
        _fit(model, train_set, test_set, batch_size, phase_epochs)
    return _keras_accuracy(model, test_set)


def _check_arguments(out, epochs, size, seed):
    name = "keras_attention demo"
    check_int(name, "epochs", epochs)
    check_int(name, "size", size, minimum=32, note=" (MobileNetV2's smallest input)")
    check_int(name, "seed", seed, minimum=0)
    check_folder(out, name)


# What one run writes; a new run replaces all of them or (when it fails) none.
OUTPUT_FILES = ("model.keras", "model_qat.keras", "model_qat.h5", "model_int8.tflite", "attention.png", "report.json")


def _publish(staging, out):
    """Moves a finished run's files from `staging` into `out`, replacing the previous run's.

    report.json goes first out and last in, so a folder interrupted half-way has no report.
    """
    os.makedirs(out, exist_ok=True)
    stale = [name for name in OUTPUT_FILES if os.path.exists(os.path.join(out, name))]
    for name in sorted(stale, key=lambda n: n != "report.json"):
        os.remove(os.path.join(out, name))
    for name in sorted(os.listdir(staging), key=lambda n: n == "report.json"):
        os.replace(os.path.join(staging, name), os.path.join(out, name))


def run_demo(out="keras_attention_demo", data=None, epochs=5, fast=False, weights=None, size=96, seed=0):
    """Runs the whole pipeline and returns the report dictionary (also written to report.json).

    Files are written to a staging folder beside `out` and moved in only when
    the run succeeds: a failed or interrupted run leaves `out` as it was.
    """
    _check_arguments(out, epochs, size, seed)
    if BACKEND != "tensorflow":
        raise RuntimeError(
            "keras-attention demo converts to TFLite and needs the TensorFlow backend "
            "(unset KERAS_BACKEND or set it to tensorflow)."
        )
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", suffix=".partial", dir=parent)
    try:
        report = _run(staging, out, data, epochs, fast, weights, size, seed)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_report(report)
    return report


def _load_data(data, size, fast, seed=0):
    """(train, test, class names): the folder's images, streamed (split and shuffled by `seed`), or
    scikit-learn's digits in memory."""
    from keras_attention.data import digits

    if data:
        train_set, test_set, class_names = load_image_folder(data, size, seed=seed)
    else:
        (x_train, y_train), (x_test, y_test) = digits(size=size, channels=3)
        train_set, test_set = ImageSplit(x_train, y_train), ImageSplit(x_test, y_test)
        class_names = [str(i) for i in range(10)]
    if fast:
        train_set, test_set = train_set.head(256), test_set.head(128)
    return train_set, test_set, class_names


def _fine_tune(train_set, test_set, classes, size, weights, epochs, fast):
    """The plain and the CBAM classifier, fine-tuned: ({name: model}, {name: test accuracy})."""
    models, accuracy = {}, {}
    for name, backbone in (("plain", "MobileNetV2"), ("cbam", "MobileNetV2 + CBAM")):
        print(f"\n== fine-tuning {backbone} ({len(train_set)} images, {epochs} epochs)")
        models[name] = build_classifier(classes, size, weights, name == "cbam")
        accuracy[name] = train(models[name], (train_set, test_set), epochs, weights == "imagenet", eager=fast)
    return models, accuracy


def _quantize(models, train_set, test_set, qat_epochs, fast):
    """Post-training int8 and QAT int8 of each model: (post-training files, QAT models, QAT files, figures)."""
    from keras_attention import tflite

    calibration = train_set.arrays(200)[0]
    post_training = {name: tflite.convert(m, "int8", representative_data=calibration) for name, m in models.items()}
    qat_models, qat_files, figures = {}, {}, {}
    for name, m in models.items():
        print(f"\n== quantization-aware training ({name}, {qat_epochs} epochs)")
        qat_models[name] = quantization_aware_training(m, (train_set, test_set), qat_epochs, eager=fast)
        # Keras 3 QAT needs no representative data (tfmot's path still calibrates with it).
        qat_files[name] = tflite.convert(qat_models[name], "int8", representative_data=calibration)
    for prefix, name in (("", "cbam"), ("plain_", "plain")):
        figures[f"{prefix}int8_accuracy"] = _accuracy(qat_files[name], test_set)
        figures[f"{prefix}post_training_int8_accuracy"] = _accuracy(post_training[name], test_set)
        figures[f"{prefix}qat_keras_accuracy"] = _keras_accuracy(qat_models[name], test_set)
    return qat_models, qat_files, figures


def _save_models(staging, model, qat_model, flatbuffer):
    """model.keras, the QAT model (.keras, or .h5 under tf_keras) and model_int8.tflite; returns the QAT file name."""
    model.save(os.path.join(staging, "model.keras"))
    qat_name = "model_qat.keras" if not IS_LEGACY else "model_qat.h5"
    if IS_LEGACY:
        from keras_attention.quantization import save_qat_model

        save_qat_model(qat_model, os.path.join(staging, qat_name))
    else:
        qat_model.save(os.path.join(staging, qat_name))
    write_bytes(os.path.join(staging, "model_int8.tflite"), flatbuffer)
    return qat_name


def _save_attention_picture(path, models, images, titles):
    """attention.png: the CBAM model's first and last spatial gates and each model's Grad-CAM.

    Returns the number of attention layers the CBAM model has.
    """
    from keras_attention import visualize

    maps = visualize.attention_maps(models["cbam"], images)
    panels = [(f"{name}\n(spatial gate)", gate) for name, gate in (maps[0], maps[-1])]
    panels += [
        (f"Grad-CAM {name}", visualize.grad_cam(m, images, layer_name=visualize.last_conv_layer_name(m)))
        for name, m in models.items()
    ]
    visualize.save_overlays(path, images, panels, titles=titles)
    return len(maps)


def _run(staging, out, data, epochs, fast, weights, size, seed):
    from keras_attention import tflite

    keras.utils.set_random_seed(seed)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    train_set, test_set, class_names = _load_data(data, size, fast, seed)
    epochs = 1 if fast else epochs
    started = time.time()
    models, accuracy = _fine_tune(train_set, test_set, len(class_names), size, weights, epochs, fast)
    qat_epochs = 1 if fast else max(1, epochs // 2)
    qat_models, int8, quantized_figures = _quantize(models, train_set, test_set, qat_epochs, fast)
    qat_name = _save_models(staging, models["cbam"], qat_models["cbam"], int8["cbam"])

    samples, sample_labels = test_set.arrays(64)
    verification = tflite.verify(qat_models["cbam"], int8["cbam"], samples, latency_runs=0)
    latency = {
        name: tflite.measure_latency(fb, threads=(1,), runs=30, sample=[samples[:1]])[1] for name, fb in int8.items()
    }
    titles = [f"class {class_names[y]}" for y in sample_labels[:4]]
    attention_layers = _save_attention_picture(os.path.join(staging, "attention.png"), models, samples[:4], titles)

    params = {name: int(m.count_params()) for name, m in models.items()}
    files = {"model": "model.keras", "qat_model": qat_name, "tflite": "model_int8.tflite", "attention": "attention.png"}
    report = {
        "keras": describe(),
        "data": data or "scikit-learn digits",
        "train_images": len(train_set),
        "test_images": len(test_set),
        "epochs": epochs,
        "image_size": size,
        "weights": weights,
        "float_accuracy": accuracy["cbam"],
        "plain_float_accuracy": accuracy["plain"],
        **quantized_figures,
        "qat_epochs": qat_epochs,
        "qat": "tfmot (tf_keras)" if IS_LEGACY else "Keras 3 (fake_quant_with_min_max_vars)",
        "seed": seed,
        "int8_top1_agreement": verification.top1_agreement,
        "int8_end_to_end": verification.int8_end_to_end,
        "builtin_ops_only": verification.all_builtin,
        "tflite_size_kib": len(int8["cbam"]) / 1024,
        "plain_tflite_size_kib": len(int8["plain"]) / 1024,
        "tflite_latency_ms_1_thread": latency["cbam"],
        "plain_tflite_latency_ms_1_thread": latency["plain"],
        "cbam_latency_ratio": latency["cbam"] / latency["plain"],
        "params": params["cbam"],
        "plain_params": params["plain"],
        "cbam_params_ratio": params["cbam"] / params["plain"],
        "attention_layers": attention_layers,
        "seconds": time.time() - started,
        "files": {key: os.path.join(out, name) for key, name in files.items()},
    }
    write_json(os.path.join(staging, "report.json"), report, "keras_attention demo")
    return report


def print_report(report):
    rows = [
        ("float accuracy (CBAM / plain)", f"{report['float_accuracy']:.4f} / {report['plain_float_accuracy']:.4f}"),
        (
            "post-training int8 accuracy (CBAM / plain)",
            f"{report['post_training_int8_accuracy']:.4f} / {report['plain_post_training_int8_accuracy']:.4f}",
        ),
        (
            "QAT int8 TFLite accuracy (CBAM / plain)",
            f"{report['int8_accuracy']:.4f} / {report['plain_int8_accuracy']:.4f}",
        ),
        (
            "QAT Keras accuracy (CBAM / plain)",
            f"{report['qat_keras_accuracy']:.4f} / {report['plain_qat_keras_accuracy']:.4f}",
        ),
        ("QAT int8 top-1 agreement with Keras QAT", f"{report['int8_top1_agreement']:.4f}"),
        ("int8 end to end, builtin ops only", f"{report['int8_end_to_end']}, {report['builtin_ops_only']}"),
        ("TFLite size (CBAM / plain)", f"{report['tflite_size_kib']:.1f} / {report['plain_tflite_size_kib']:.1f} KiB"),
        (
            "TFLite latency, 1 thread (CBAM / plain)",
            f"{report['tflite_latency_ms_1_thread']:.2f} / {report['plain_tflite_latency_ms_1_thread']:.2f} ms "
            f"({report['cbam_latency_ratio']:.2f}x)",
        ),
        (
            "parameters (CBAM / plain)",
            f"{report['params']:,} / {report['plain_params']:,} ({report['cbam_params_ratio']:.3f}x)",
        ),
        ("CBAM blocks inserted", str(report["attention_layers"])),
        ("wall time", f"{report['seconds']:.0f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(f"\nwrote {', '.join(report['files'].values())}, report.json")
