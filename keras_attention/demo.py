"""The end-to-end demo behind `keras-attention demo` (and `make demo`).

MobileNetV2 (alpha 0.35) is fine-tuned on scikit-learn's digits (or a folder
of images) without attention and with each attention asked for (`attach` on
every residual branch; CBAM by default), then fine-tuned again with
quantization-aware training (Keras 3 QAT, or tfmot under tf_keras) and
converted to full-integer int8 TFLite. One table compares the models: float,
post-training int8 and QAT int8 accuracy (mean and spread over `--seeds`),
int8 latency (interleaved), parameters, file size. The first attention's
model is shipped: `model.keras`, `model_qat.keras`, `model_int8.tflite` (the
QAT file, verified in the LiteRT interpreter), with `report.json` and
`attention.png` in the output folder.

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


def build_classifier(num_classes, size, weights, attention=None, max_size=None):
    """MobileNetV2 (alpha 0.35) with a pooled linear head, one flat functional graph.

    `attention`: a `get_attention` name inserted on every residual branch by
    `attach` (only on maps of at most `max_size` x `max_size` when given), or
    None for the plain model.
    """
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
    if attention is not None:
        model = attach(model, attention, where="residual", preserve_outputs=True, max_size=max_size)
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


def parse_attention(attention):
    """The attentions to compare, in order: a name, a comma-separated string or a list of names."""
    from keras_attention.layers.factory import ATTENTIONS

    names = attention.split(",") if isinstance(attention, str) else list(attention)
    names = [n.strip() if isinstance(n, str) else n for n in names]
    where = "keras_attention demo: `attention`"
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"{where} must name one or more attentions, e.g. 'cbam' or 'cbam,se,eca'; got {attention!r}.")
    if "plain" in names:
        raise ValueError(f"{where}: 'plain' (the backbone without attention) is always trained; name attentions only.")
    unknown = [n for n in names if n not in ATTENTIONS]
    if unknown:
        raise ValueError(f"{where}: unknown {', '.join(map(repr, unknown))}; known: {', '.join(sorted(ATTENTIONS))}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{where} lists {', '.join(map(repr, repeated))} more than once; each is trained once.")
    return names


def _check_arguments(out, epochs, size, seed, seeds, max_size):
    name = "keras_attention demo"
    check_int(name, "epochs", epochs)
    check_int(name, "size", size, minimum=32, note=" (MobileNetV2's smallest input)")
    check_int(name, "seed", seed, minimum=0)
    check_int(name, "seeds", seeds)
    check_int(name, "max_size", max_size, allow_none=True)
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


def run_demo(
    out="keras_attention_demo",
    data=None,
    epochs=5,
    fast=False,
    weights=None,
    size=96,
    seed=0,
    attention="cbam",
    seeds=1,
    max_size=None,
):
    """Runs the whole pipeline and returns the report dictionary (also written to report.json).

    `attention`: the attentions to compare with the plain backbone (a name, a
    comma-separated string or a list); the first one's files are shipped.
    `seeds`: runs per model, with seeds `seed, seed + 1, ...`: the report gives
    each accuracy's mean and standard deviation. `max_size`: attention only on
    feature maps of at most `max_size` x `max_size` (`attach`'s placement).

    Files are written to a staging folder beside `out` and moved in only when
    the run succeeds: a failed or interrupted run leaves `out` as it was.
    """
    attention = parse_attention(attention)
    _check_arguments(out, epochs, size, seed, seeds, max_size)
    if BACKEND != "tensorflow":
        raise RuntimeError(
            "keras-attention demo converts to TFLite and needs the TensorFlow backend "
            "(unset KERAS_BACKEND or set it to tensorflow)."
        )
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.", suffix=".partial", dir=parent)
    try:
        settings = dict(data=data, epochs=epochs, fast=fast, weights=weights, size=size, max_size=max_size)
        report = _run(staging, out, attention, list(range(seed, seed + seeds)), settings)
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


def _fine_tune(names, train_set, test_set, classes, settings, epochs):
    """The plain classifier and one per attention, fine-tuned: ({name: model}, {name: test accuracy}).

    Every model is built before the first trains, so a placement that matches
    no block fails at once.
    """
    size, weights, fast = settings["size"], settings["weights"], settings["fast"]
    models = {
        name: build_classifier(classes, size, weights, None if name == "plain" else name, settings["max_size"])
        for name in names
    }
    accuracy = {}
    for name, model in models.items():
        print(
            f"\n== fine-tuning MobileNetV2{'' if name == 'plain' else ' + ' + name} "
            f"({len(train_set)} images, {epochs} epochs)"
        )
        accuracy[name] = train(model, (train_set, test_set), epochs, weights == "imagenet", eager=fast)
    return models, accuracy


def _quantize(models, train_set, test_set, qat_epochs, fast):
    """Post-training int8 and QAT int8 of each model: (QAT models, QAT files, {name: accuracy figures})."""
    from keras_attention import tflite

    calibration = train_set.arrays(200)[0]
    qat_models, qat_files, figures = {}, {}, {}
    for name, m in models.items():
        post_training = tflite.convert(m, "int8", representative_data=calibration)
        print(f"\n== quantization-aware training ({name}, {qat_epochs} epochs)")
        qat_models[name] = quantization_aware_training(m, (train_set, test_set), qat_epochs, eager=fast)
        # Keras 3 QAT needs no representative data (tfmot's path still calibrates with it).
        qat_files[name] = tflite.convert(qat_models[name], "int8", representative_data=calibration)
        figures[name] = {
            "post_training_int8_accuracy": _accuracy(post_training, test_set),
            "int8_accuracy": _accuracy(qat_files[name], test_set),
            "qat_keras_accuracy": _keras_accuracy(qat_models[name], test_set),
        }
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
    """attention.png: the first and last spatial gates of the first model that has them (CBAM, light
    CBAM), and each model's Grad-CAM."""
    from keras_attention import visualize

    panels = []
    gated = [name for name, m in models.items() if visualize.holds_spatial_gates(m)]
    if gated:
        maps = visualize.attention_maps(models[gated[0]], images)
        panels += [(f"{layer}\n(spatial gate)", gate) for layer, gate in (maps[0], maps[-1])]
    panels += [
        (f"Grad-CAM {name}", visualize.grad_cam(m, images, layer_name=visualize.last_conv_layer_name(m)))
        for name, m in models.items()
    ]
    visualize.save_overlays(path, images, panels, titles=titles)


ACCURACIES = ("float_accuracy", "post_training_int8_accuracy", "int8_accuracy", "qat_keras_accuracy")


def _summary(values):
    """Mean, sample standard deviation (None for one run) and the values of one accuracy over the seeds."""
    values = [float(v) for v in values]
    spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), spread, values


def _run(staging, out, attention, seeds, settings):

    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    names = ["plain", *attention]
    fast, epochs = settings["fast"], 1 if settings["fast"] else settings["epochs"]
    qat_epochs = 1 if fast else max(1, epochs // 2)
    started = time.time()
    per_seed = {name: {key: [] for key in ACCURACIES} for name in names}
    for run_seed in seeds:
        if len(seeds) > 1:
            print(f"\n==== seed {run_seed}")
        keras.utils.set_random_seed(run_seed)
        train_set, test_set, class_names = _load_data(settings["data"], settings["size"], fast, run_seed)
        models, accuracy = _fine_tune(names, train_set, test_set, len(class_names), settings, epochs)
        qat_models, int8, quantized = _quantize(models, train_set, test_set, qat_epochs, fast)
        for name in names:
            for key, value in {"float_accuracy": accuracy[name], **quantized[name]}.items():
                per_seed[name][key].append(value)
        if run_seed == seeds[0]:  # the first seed's models are shipped, timed and pictured
            shipped = _ship(staging, out, attention[0], models, qat_models, int8, test_set, class_names)
    report = {
        "keras": describe(),
        "data": settings["data"] or "scikit-learn digits",
        "train_images": len(train_set),
        "test_images": len(test_set),
        "epochs": epochs,
        "image_size": settings["size"],
        "weights": settings["weights"],
        "max_size": settings["max_size"],
        "qat_epochs": qat_epochs,
        "qat": "tfmot (tf_keras)" if IS_LEGACY else "Keras 3 (fake_quant_with_min_max_vars)",
        "seeds": seeds,
        "attention": attention,
        "shipped": attention[0],
        **shipped["verification"],
        "models": {},
        "seconds": None,
        "files": shipped["files"],
    }
    plain = shipped["models"]["plain"]
    for name in names:
        entry = dict(shipped["models"][name])
        entry["latency_ratio"] = entry["tflite_latency_ms_1_thread"] / plain["tflite_latency_ms_1_thread"]
        entry["params_ratio"] = entry["params"] / plain["params"]
        for key in ACCURACIES:
            entry[key], entry[f"{key}_std"], entry[f"{key}_per_seed"] = _summary(per_seed[name][key])
        report["models"][name] = entry
    report["seconds"] = time.time() - started
    write_json(os.path.join(staging, "report.json"), report, "keras_attention demo")
    return report


def _ship(staging, out, name, models, qat_models, int8, test_set, class_names):
    """Saves the shipped model's files, verifies its int8 file, times every int8 file, draws attention.png."""
    from keras_attention import tflite
    from keras_attention.backbones import attention_layers

    qat_name = _save_models(staging, models[name], qat_models[name], int8[name])
    samples, sample_labels = test_set.arrays(64)
    verification = tflite.verify(qat_models[name], int8[name], samples, latency_runs=0)
    # One interleaved measurement of every file: the ratios compare runs of the same moment.
    latency = tflite.measure_latency(int8, threads=(1,), runs=30, sample=[samples[:1]])
    titles = [f"class {class_names[y]}" for y in sample_labels[:4]]
    _save_attention_picture(os.path.join(staging, "attention.png"), models, samples[:4], titles)
    files = {"model": "model.keras", "qat_model": qat_name, "tflite": "model_int8.tflite", "attention": "attention.png"}
    return {
        "verification": {
            "int8_top1_agreement": verification.top1_agreement,
            "int8_end_to_end": verification.int8_end_to_end,
            "builtin_ops_only": verification.all_builtin,
        },
        "models": {
            n: {
                "params": int(m.count_params()),
                "attention_layers": len(attention_layers(m)),
                "tflite_size_kib": len(int8[n]) / 1024,
                "tflite_latency_ms_1_thread": latency[n][1],
            }
            for n, m in models.items()
        },
        "files": {key: os.path.join(out, file) for key, file in files.items()},
    }


def _accuracy_cell(entry, key):
    std = entry[f"{key}_std"]
    return f"{entry[key]:.4f}" if std is None else f"{entry[key]:.4f} ± {std:.4f}"


def print_report(report):
    """One row per model (the plain backbone first), then the shipped file's checks and the spread."""
    headers = [
        "model",
        "float",
        "post-training int8",
        "QAT int8 (LiteRT)",
        "QAT Keras",
        "int8 ms, 1 thread",
        "params",
        "int8 KiB",
        "blocks",
    ]
    rows = []
    for name, entry in report["models"].items():
        rows.append(
            [
                "MobileNetV2 (plain)" if name == "plain" else f"+ {name}",
                *(_accuracy_cell(entry, key) for key in ACCURACIES),
                f"{entry['tflite_latency_ms_1_thread']:.2f} ({entry['latency_ratio']:.2f}x)",
                f"{entry['params']:,} ({entry['params_ratio']:.3f}x)",
                f"{entry['tflite_size_kib']:.1f}",
                str(entry["attention_layers"]),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    for cells in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    seeds = report["seeds"]
    print(
        f"\nshipped: {report['shipped']} (model_int8.tflite): int8 end to end {report['int8_end_to_end']}, "
        f"builtin ops only {report['builtin_ops_only']}, "
        f"top-1 agreement with Keras QAT {report['int8_top1_agreement']:.4f}"
    )
    if len(seeds) > 1:
        print(
            f"accuracy: mean ± standard deviation over seeds {seeds[0]}-{seeds[-1]} ({report['test_images']} test "
            "images); a difference smaller than about twice the deviation is run-to-run noise"
        )
    else:
        print(
            f"accuracy: one run (seed {seeds[0]}, {report['test_images']} test images); on the digits, seeds move "
            "these figures by about a point or more (docs/demo.md): --seeds 3 measures the spread"
        )
    print(f"wall time {report['seconds']:.0f} s")
    print(f"\nwrote {', '.join(report['files'].values())}, report.json")
