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
def test_demo_on_an_image_folder_writes_checked_artefacts(tmp_path):
    data = _image_folder(tmp_path / "images", ["left", "right"])
    out = tmp_path / "out"
    # The first run from the wheel installed in a fresh environment, run outside the checkout.
    bin_dir = _install_wheel(tmp_path)
    where = subprocess.run(
        [bin_dir / "python", "-c", "import keras_attention; print(keras_attention.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    result = _demo(
        "--fast",
        "--size",
        "32",
        "--data",
        str(data),
        "--out",
        str(out),
        command=[bin_dir / "keras-attention"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # The table printed what report.json holds.
    assert f"{report['int8_accuracy']:.4f}" in result.stdout
    assert f"{report['tflite_latency_ms_1_thread']:.2f}" in result.stdout
    assert report["attention_layers"] == 10 and report["int8_end_to_end"] and report["builtin_ops_only"]
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout  # a redirected log: no progress bar

    from keras_attention import tflite
    from keras_attention.backend import keras

    # The shipped int8 file is the QAT model's: compare it with that model reloaded, not with the float one
    # (which trained one epoch less; the control below shows they differ).
    qat = keras.models.load_model(out / "model_qat.keras", safe_mode=True)
    float_model = keras.models.load_model(out / "model.keras", safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    verification = tflite.verify(qat, str(out / "model_int8.tflite"), x, latency_runs=0, analyze_gpu=False)
    assert verification.int8_end_to_end and verification.all_builtin
    assert verification.cosine_similarity > 0.99
    assert not np.allclose(qat.predict(x, verbose=0), float_model.predict(x, verbose=0), atol=1e-3)

    # Determinism: a second run (from the checkout) with the same seed gives the same figures and int8 file.
    again = _demo("--fast", "--size", "32", "--data", str(data), "--out", str(tmp_path / "again"), "--seed", "0")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = json.loads((tmp_path / "again" / "report.json").read_text())
    timing = {
        "seconds",
        "files",
        "tflite_latency_ms_1_thread",
        "plain_tflite_latency_ms_1_thread",
        "cbam_latency_ratio",
    }
    assert {k: v for k, v in second.items() if k not in timing} == {k: v for k, v in report.items() if k not in timing}
    assert (tmp_path / "again" / "model_int8.tflite").read_bytes() == (out / "model_int8.tflite").read_bytes()
    # Control: the seed reaches what the equality depends on (test_the_seed_reaches_the_split_and_weights).

    png = (out / "attention.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1100, 880)  # 5 panels x 2.2 in, 4 rows x 2.2 in, at 100 dpi


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
        weights.append(demo.build_classifier(2, 32, None, attention=True).get_weights())
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
