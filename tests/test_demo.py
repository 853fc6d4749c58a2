"""`keras-attention demo`: the artefacts it writes hold what it printed, and bad folders fail clearly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.keras3_tensorflow(reason="the demo runs on Keras 3 + TensorFlow")


def _image_folder(root, classes, per_class=12, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        os.makedirs(root / name)
        for i in range(per_class):
            image = np.zeros((size, size, 3), "uint8")
            image[:, : size // 2] = 200 if k == 0 else 30  # a class-dependent, learnable pattern
            image += rng.integers(0, 40, image.shape, dtype="uint8")
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def _demo(*args, command=(sys.executable, "-m", "keras_attention.cli"), cwd=None):
    return subprocess.run(
        [*command, "demo", *args], capture_output=True, text=True, timeout=1200, env=dict(os.environ), cwd=cwd
    )


def _install_wheel(tmp_path):
    """The package built as a wheel and installed into a new virtual environment; returns its bin/.

    Only the wheel goes in (`--no-deps`): the dependencies, already installed in
    this environment, are put on the new one's path by a .pth line, which does
    not run this environment's .pth files (so not the checkout's editable hook).
    `pip check` then confirms the wheel's requirements are met.
    """
    import sysconfig

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", root, "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist"], check=True
    )
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    with open(os.path.join(purelib, "_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    subprocess.run([*pip, "--python", python, "install", "-q", "--no-deps", wheel], check=True)
    subprocess.run([*pip, "--python", python, "check"], check=True, capture_output=True)
    return tmp_path / "venv" / "bin"


@pytest.mark.slow
def test_demo_on_an_image_folder_compares_attentions_and_writes_checked_artefacts(tmp_path):
    data = _image_folder(tmp_path / "images", ["left", "right"])
    out = tmp_path / "out"
    # From the wheel installed in a fresh environment, run outside the checkout.
    bin_dir = _install_wheel(tmp_path)
    where = subprocess.run(
        [bin_dir / "python", "-c", "import keras_attention; print(keras_attention.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    args = ["--fast", "--size", "32", "--data", str(data), "--out", str(out), "--attention", "cbam,se"]
    result = _demo(*args, command=[bin_dir / "keras-attention"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["plain", "cbam", "se"] and report["shipped"] == "cbam"
    # The table printed what report.json holds: one row per model.
    lines = result.stdout.splitlines()
    for name, label in (("plain", "MobileNetV2 (plain)"), ("cbam", "+ cbam"), ("se", "+ se")):
        entry = report["models"][name]
        (row,) = [line for line in lines if line.startswith(label + " ")]
        assert f"{entry['int8_accuracy']:.4f}" in row and f"{entry['tflite_latency_ms_1_thread']:.2f}" in row, row
        assert f"{entry['params']:,}" in row and entry["int8_accuracy_std"] is None
    assert "one run (seed 0" in result.stdout
    # Every block counted from the saved model, and the parameter cost against the plain model's.
    assert [report["models"][n]["attention_layers"] for n in ("plain", "cbam", "se")] == [0, 10, 10]
    assert report["models"]["cbam"]["params_ratio"] > report["models"]["se"]["params_ratio"] > 1
    assert report["int8_end_to_end"] and report["builtin_ops_only"]
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout  # a redirected log: no progress bar

    from keras_attention import tflite
    from keras_attention.backbones import attention_layers
    from keras_attention.backend import keras

    # The shipped files are the first attention's; the int8 file is the QAT model's: compare it with that
    # model reloaded, not with the float one (which trained one epoch less; the control shows they differ).
    qat = keras.models.load_model(out / "model_qat.keras", safe_mode=True)
    float_model = keras.models.load_model(out / "model.keras", safe_mode=True)
    assert len(attention_layers(float_model)) == 10
    assert {type(layer).__name__ for layer in attention_layers(float_model)} == {"CBAM"}
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    verification = tflite.verify(qat, str(out / "model_int8.tflite"), x, latency_runs=0, analyze_gpu=False)
    assert verification.int8_end_to_end and verification.all_builtin
    assert verification.cosine_similarity > 0.99
    assert not np.allclose(qat.predict(x, verbose=0), float_model.predict(x, verbose=0), atol=1e-3)

    png = (out / "attention.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1320, 880)  # 2 gates + 3 Grad-CAMs + the image = 6 panels x 2.2 in, 4 rows, 100 dpi


def test_the_same_seed_trains_and_converts_to_the_same_file():
    """Determinism, what two demo runs with one seed rely on: the same seed gives the same trained
    weights and an int8 file that computes the same bits (in one process the layer names, and so the
    file's tensor names, differ). The control, that another seed changes them:
    test_the_seed_reaches_the_split_and_the_initial_weights."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    from keras_attention import tflite

    was_on = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()  # as the demo does; switched back below for later tests
    try:
        runs = _train_and_convert_twice()
    finally:
        if not was_on:
            tf_config.disable_op_determinism()
    (weights, int8), (weights_again, int8_again) = runs
    assert all(np.array_equal(a, b) for a, b in zip(weights, weights_again))
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    outputs = tflite.run(int8, x)[0]
    np.testing.assert_array_equal(tflite.run(int8_again, x)[0], outputs)


def _train_and_convert_twice():
    """The demo's recipe on 32 random images with seed 0, twice: (float weights, QAT int8 file) each."""
    from keras_attention import demo, tflite
    from keras_attention.backend import keras

    rng = np.random.default_rng(0)
    split = demo.ImageSplit(rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32"), np.arange(32) % 2)
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = demo.build_classifier(2, 32, None, "cbam")
        demo.train(model, (split, split), 1, False, batch_size=16, eager=True)
        qat = demo.quantization_aware_training(model, (split, split), 1, batch_size=16, eager=True)
        runs.append((model.get_weights(), tflite.convert(qat, "int8")))
    return runs


def test_the_seed_reaches_the_split_and_the_initial_weights(tmp_path):
    """The control of the determinism check above: another seed gives another train/test split and shuffle
    order of an image folder, and other initial weights, so equal reruns are the seed's doing."""
    from keras_attention import demo
    from keras_attention.backend import keras

    data = _image_folder(tmp_path / "images", ["left", "right"])
    first, again, other = (demo._load_data(str(data), 32, False, seed)[0] for seed in (0, 0, 1))
    assert list(first.paths) == list(again.paths) and first.shuffle_seed == again.shuffle_seed == 0
    assert list(first.paths) != list(other.paths) and other.shuffle_seed == 1
    weights = []
    for seed in (0, 0, 1):
        keras.utils.set_random_seed(seed)
        weights.append(demo.build_classifier(2, 32, None, "cbam").get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))


def test_an_image_folder_is_streamed_and_decoded_like_pil(tmp_path):
    """`--data` keeps file names, not images; the batches it decodes match PIL's reading of the files."""
    from PIL import Image

    from keras_attention.demo import load_image_folder

    root = _image_folder(tmp_path / "data", ["left", "right"], per_class=5)
    train, test, classes = load_image_folder(str(root), 32)
    assert classes == ["left", "right"] and len(train) + len(test) == 10
    assert train.images is None and test.images is None  # nothing decoded up front
    dataset = train.inputs(4, training=True)["x"]
    assert tuple(dataset.element_spec[0].shape) == (None, 32, 32, 3)  # batches, decoded as they are read

    images, labels = test.arrays()
    for image, label, path in zip(images, labels, test.paths):
        assert os.path.basename(os.path.dirname(path)) == classes[label]
        with Image.open(path) as source:  # upsampling: PIL's bilinear filter is TensorFlow's
            expected = np.asarray(source.convert("RGB").resize((32, 32), Image.BILINEAR), "float32")
        np.testing.assert_allclose(image, expected, atol=1.01)
    # Control: another resampling filter is not within tolerance.
    with Image.open(test.paths[0]) as source:
        other = np.asarray(source.convert("RGB").resize((32, 32), Image.NEAREST), "float32")
    assert np.abs(images[0] - other).max() > 1.01


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root.mkdir(), "no images in"),
        (lambda root: _image_folder(root, ["only"]), "found one class"),
        (
            lambda root: (_image_folder(root, ["a", "b"]), (root / "a" / "broken.png").write_bytes(b"not a png")),
            "cannot read image",
        ),
    ],
)
def test_bad_image_folders(tmp_path, make, message):
    from keras_attention.demo import load_image_folder

    root = tmp_path / "data"
    make(root)
    with pytest.raises(ValueError, match=f"demo --data: {message}"):
        load_image_folder(str(root), 32)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = _demo("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "keras-attention demo: demo --data:" in result.stderr and "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "`epochs` must be an integer >= 1; got 0"),
        (["--epochs", "-3"], "`epochs` must be an integer >= 1; got -3"),
        (["--size", "0"], "`size` must be an integer >= 32 (MobileNetV2's smallest input); got 0"),
        (["--seed", "-1"], "`seed` must be an integer >= 0; got -1"),
        (["--seeds", "0"], "`seeds` must be an integer >= 1; got 0"),
        (["--max-size", "0"], "`max_size` must be an integer >= 1; got 0"),
        (
            ["--attention", "cbam,nope"],
            "`attention`: unknown 'nope'; known: cbam, ceca, channel, coord, eca, ecam, "
            "ela, ese, gc, gca, ge, lcbam, scoord, se, spatial, strip",
        ),
        (["--attention", "se,eca,se"], "`attention` lists 'se' more than once; each is trained once"),
        (
            ["--attention", "plain,se"],
            "`attention`: 'plain' (the backbone without attention) is always trained; name attentions only",
        ),
        (
            ["--attention", "se,,eca"],
            "`attention` must name one or more attentions, e.g. 'cbam' or 'cbam,se,eca'; got 'se,,eca'",
        ),
    ],
)
def test_bad_demo_arguments_fail_at_once_in_one_line(tmp_path, capsys, args, message):
    # In process (the entry point itself is run by test_cli_reports_errors_without_a_traceback).
    from keras_attention.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")
    assert main(["demo", *args, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"keras-attention demo: keras_attention demo: {message}."]
    assert os.listdir(tmp_path / "out") == ["report.json"]  # nothing written, nothing removed


def test_demo_output_under_a_file_is_one_line(tmp_path, capsys):
    from keras_attention.cli import main

    (tmp_path / "a_file").write_text("")
    assert main(["demo", "--out", str(tmp_path / "a_file" / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a_file' is a file, not a folder" in lines[0]


def test_a_placement_that_matches_no_block_fails_before_any_training(tmp_path, capsys):
    from keras_attention.cli import main

    out = tmp_path / "out"
    # At 96x96 (the default size) MobileNetV2's residual branches run on maps of 24x24 down to 3x3.
    assert main(["demo", "--fast", "--max-size", "2", "--attention", "se", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "max_size=2 leaves none of the 10 blocks" in lines[0], lines
    assert "Use max_size >= 3." in lines[0]
    assert "fine-tuning" not in captured.out and (not out.exists() or os.listdir(out) == [])
