"""`keras-attention convert`: a saved model in, a verified .tflite out."""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_attention as ka
from keras_attention.backend import keras


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_attention.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )


@pytest.mark.slow
@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
def test_convert_int8_from_a_keras_file(tmp_path):
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = ka.CBAM(reduction=2)(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "m.keras")
    calibration = np.random.default_rng(0).uniform(0, 1, (40, 12, 12, 3)).astype("float32")
    np.save(tmp_path / "calibration.npy", calibration)
    result = _cli(
        "convert",
        str(tmp_path / "m.keras"),
        str(tmp_path / "m.tflite"),
        "--quantization",
        "int8",
        "--representative",
        str(tmp_path / "calibration.npy"),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "int8 end to end       True" in result.stdout or "int8 end to end      True" in result.stdout
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tmp_path / "m.tflite"))
    interpreter.allocate_tensors()
    assert interpreter.get_output_details()[0]["shape"].tolist() == [1, 3]


@pytest.mark.tensorflow_backends(reason="converts to TFLite")
def test_convert_without_representative_data_fails_clearly(tmp_path, capsys):
    from keras_attention.cli import main

    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, ka.CBAM(reduction=1)(inputs)).save(tmp_path / "m.keras")
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "m.tflite"), "--quantization", "int8"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-attention convert: ") and "representative" in lines[0], lines
    assert not (tmp_path / "m.tflite").exists()


def _bad_cli_case(tmp_path, case):
    model, output, extra = tmp_path / "m.keras", tmp_path / "m.tflite", []
    if case == "missing model":
        return [str(tmp_path / "missing.keras"), str(output)], "no model at"
    if case == "empty .keras":
        model.write_bytes(b"")
        return [str(model), str(output)], "(0 bytes) is not a readable Keras model file"
    if case == "random bytes .keras":
        model.write_bytes(np.random.default_rng(0).bytes(3000))
        return [str(model), str(output)], "(3000 bytes) is not a readable Keras model file"
    keras.Model(*(lambda i: (i, keras.layers.Dense(2)(i)))(keras.Input((3,)))).save(model)
    if case == "missing .npy":
        extra = ["--quantization", "int8", "--representative", str(tmp_path / "missing.npy")]
        return [str(model), str(output), *extra], "--representative: no file at"
    if case == "corrupt .npy":
        (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
        extra = ["--quantization", "int8", "--representative", str(tmp_path / "bad.npy")]
        return [str(model), str(output), *extra], "is not a readable .npy array"
    if case == "output under a file":
        (tmp_path / "a_file").write_bytes(b"")
        return [str(model), str(tmp_path / "a_file" / "m.tflite")], "a_file' is a file, not a folder"
    raise AssertionError(case)


@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
@pytest.mark.parametrize(
    "case",
    ["missing model", "empty .keras", "random bytes .keras", "missing .npy", "corrupt .npy", "output under a file"],
)
def test_convert_failures_are_one_line_with_status_2(tmp_path, capsys, case):
    # In process; the entry point itself runs in the test below.
    from keras_attention.cli import main

    args, message = _bad_cli_case(tmp_path, case)
    capsys.readouterr()
    assert main(["convert", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-attention convert: ") and message in lines[0], lines
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
def test_the_command_fails_in_one_line_and_shows_the_traceback_with_debug(tmp_path):
    args, message = _bad_cli_case(tmp_path, "missing model")
    result = _cli("convert", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()  # no TensorFlow log lines either
    assert len(lines) == 1 and message in lines[0], lines
    debug = _cli("--debug", "convert", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.run_once
def test_the_command_prints_no_native_log_lines_unless_verbose():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")  # TensorFlow's most talkative setting
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "keras_attention.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )
    quiet, verbose = run("info"), run("--verbose", "info")
    assert quiet.returncode == verbose.returncode == 0
    assert quiet.stdout == verbose.stdout and quiet.stdout.startswith("keras_attention ")
    assert quiet.stderr == "", quiet.stderr
    assert "I0000" in verbose.stderr or "absl::InitializeLog" in verbose.stderr  # control: there were some


@pytest.mark.keras3_tensorflow(reason="exports Keras 3 .keras files")
def test_convert_writes_onnx_and_openvino_and_verifies_them(tmp_path, capsys):
    import onnxruntime

    from keras_attention.cli import main

    inputs = keras.Input((8, 8, 4))
    model = keras.Model(inputs, ka.CBAM(reduction=2)(inputs))
    model.save(tmp_path / "m.keras")
    data = np.random.default_rng(0).normal(size=(3, 8, 8, 4)).astype("float32")
    np.save(tmp_path / "data.npy", data)
    for output in ("m.onnx", "m.xml"):
        assert (
            main(
                [
                    "convert",
                    str(tmp_path / "m.keras"),
                    str(tmp_path / output),
                    "--representative",
                    str(tmp_path / "data.npy"),
                ]
            )
            == 0
        )
        assert "max rel error" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: data})[0], model(data), atol=1e-5)
    assert (tmp_path / "m.bin").exists()
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "q.onnx"), "--quantization", "int8"]) == 2
    assert "applies to .tflite" in capsys.readouterr().err


def _readme_model(path):
    """The README's first model: unknown spatial sizes, saved and never called."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = ka.CBAM(reduction=2, kernel_size=3)(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(path)
    return model


def _image_folder(root, classes=2, per_class=3, size=12):
    """A class-per-sub-folder image folder (the layout `demo --data` takes), random RGB pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype="uint8")
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
def test_convert_exports_a_model_of_unknown_size_to_onnx(tmp_path, capsys):
    """Issue 29.3: the README's model to ONNX from the command line, called on --input-shape or the data."""
    import onnxruntime

    from keras_attention.cli import main

    model = _readme_model(tmp_path / "m.keras")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "a.onnx")]) == 2  # control: no size known
    assert "--input-shape" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "a.onnx"), "--input-shape", "16,16,3"]) == 0
    folder = _image_folder(tmp_path / "images")
    args = ["--representative", str(folder), "--preprocess", "unit"]
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "b.onnx"), *args]) == 0
    assert "max rel error" in capsys.readouterr().out  # verified on the folder's images
    data = np.random.default_rng(1).uniform(0, 1, (2, 20, 24, 3)).astype("float32")  # another size: still free
    for name in ("a.onnx", "b.onnx"):
        session = onnxruntime.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: data})[0]
        np.testing.assert_allclose(got, np.asarray(model(data)), rtol=1e-4, atol=1e-5)


@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
def test_convert_refuses_an_unknown_extension_and_writes_nothing(tmp_path, capsys):
    from keras_attention.cli import main

    _readme_model(tmp_path / "m.keras")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "out.pb")]) == 2
    error = capsys.readouterr().err
    assert "out.pb" in error and ".tflite" in error and ".onnx" in error, error
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]
    # A missing parent folder is created, deliberately, and said.
    assert main(["convert", str(tmp_path / "m.keras"), str(tmp_path / "new" / "m.tflite")]) == 0
    assert "creating the folder" in capsys.readouterr().out and (tmp_path / "new" / "m.tflite").exists()


@pytest.mark.keras3_tensorflow(reason="converts Keras 3 .keras files")
def test_convert_int8_from_a_class_folder_needs_the_preprocessing(tmp_path, capsys):
    """Issue 29.2: class sub-folders are read; raw pixels for a model without Rescaling are refused."""
    from keras_attention.cli import main

    _readme_model(tmp_path / "m.keras")
    folder = _image_folder(tmp_path / "images", size=16)
    base = ["convert", str(tmp_path / "m.keras"), str(tmp_path / "m.tflite"), "--quantization", "int8"]
    capsys.readouterr()
    assert main([*base, "--representative", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "raw pixels" in error and "preprocess" in error and not (tmp_path / "m.tflite").exists(), error
    assert main([*base, "--representative", str(folder), "--preprocess", "unit", "--input-shape", "16,16,3"]) == 0
    out = capsys.readouterr().out
    assert "(int8, 6 samples)" in out, out  # all six images of both classes, verified
    (folder / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert main([*base, "--representative", str(folder), "--preprocess", "unit"]) == 2
    error = capsys.readouterr().err
    assert "broken.jpg" in error and len(error.strip().splitlines()) == 1, error


def test_version_and_the_extras_in_info(capsys):
    from keras_attention import __version__
    from keras_attention.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"keras-vision-attention {__version__}"
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "[qat] installed" in out and "[onnx] installed" in out, out  # the test extra installs both
    assert "[jax-onnx] missing jax2onnx" in out or "[jax-onnx] installed" in out, out


@pytest.mark.run_once
def test_the_preprocess_names_compute_their_formulas():
    """--preprocess NAME against the formulas written out in NumPy (ImageNet mean/std as published)."""
    from keras_attention.cli import _preprocess_function, main

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = {
        "raw": x,
        "unit": x / 255,
        "signed": x / 127.5 - 1,
        "torch": (x / 255 - mean) / std,
        "caffe": x[..., ::-1] - np.array([103.939, 116.779, 123.68]),
        "numpy:sqrt": np.sqrt(x),
    }
    for name, want in expected.items():
        np.testing.assert_allclose(np.asarray(_preprocess_function(name)(x)), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(SystemExit):  # argparse: an unusable --input-shape
        main(["convert", "m.keras", "m.tflite", "--input-shape", "0,96,3"])
    for bad in ("imagenet", "numpy:no_such_function", "keras_attention:__version__"):
        with pytest.raises(ValueError, match="--preprocess"):
            _preprocess_function(bad)
