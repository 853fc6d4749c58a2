"""The `keras-attention` command."""

import argparse
import importlib
import os
import sys

# convert's output formats, by the file's extension.
OUTPUT_FORMATS = {".tflite": "TFLite", ".onnx": "ONNX", ".xml": "OpenVINO IR (with its .bin)"}

# --preprocess names: how a folder's raw pixels (0-255) become the model's input.
PREPROCESSING = {
    "raw": "the pixels as they are, 0-255 (a model with its own Rescaling, or trained on raw pixels)",
    "unit": "pixels / 255, in [0, 1]",
    "signed": "pixels / 127.5 - 1, in [-1, 1] (keras.applications' 'tf' mode: MobileNet, NASNet, ...)",
    "torch": "pixels / 255, then ImageNet mean and std (timm and torchvision checkpoints)",
    "caffe": "RGB to BGR, minus the ImageNet mean (keras.applications ResNet50, VGG)",
}

# The extras of keras-vision-attention (pyproject.toml) and the distributions that make each one.
EXTRAS = {
    "qat": ("tf_keras", "tensorflow-model-optimization"),
    "litert": ("ai-edge-litert",),
    "jax": ("jax",),
    "onnx": ("onnx", "onnxruntime", "tf2onnx"),
    "jax-onnx": ("jax2onnx",),
    "openvino": ("openvino",),
    "demo": ("scikit-learn", "matplotlib", "pillow"),
    "weights": ("safetensors",),
    "torch": ("torch",),
}


def _demo(args):
    from keras_attention.demo import run_demo

    weights = None if args.weights in (None, "none") else args.weights
    run_demo(
        out=args.out,
        data=args.data,
        epochs=args.epochs,
        fast=args.fast,
        weights=weights,
        size=args.size,
        seed=args.seed,
        attention=args.attention,
        seeds=args.seeds,
        max_size=args.max_size,
    )


def _export(args, model, samples):
    """`convert` to .onnx or OpenVINO .xml: Keras' exporter, then the file verified in its own runtime."""
    import numpy as np

    from keras_attention import _compat, export

    if args.quantization != "float32" or args.int8_io:
        raise ValueError(
            f"--quantization {args.quantization}{' --int8-io' if args.int8_io else ''} applies to .tflite; "
            "ONNX and OpenVINO files are written in float32."
        )
    if model is None:
        raise ValueError(f"exporting to {args.output!r} needs a .keras model file; got the SavedModel {args.model!r}.")
    if not _compat.has_been_called(model):  # Keras exports only a called model: call it on what we have
        if samples is not None:
            model(samples[: args.batch_size or 1], training=False)
        elif args.input_shape:
            model(np.zeros((args.batch_size or 1, *args.input_shape), "float32"), training=False)
        elif any(None in tuple(t.shape)[1:] for t in model.inputs):
            raise ValueError(
                f"{args.model!r} has unknown input sizes {[tuple(t.shape) for t in model.inputs]} and was never "
                "called, which Keras' exporters need: give --input-shape H,W,C or --representative data."
            )
    writer = export.export_onnx if args.output.lower().endswith(".onnx") else export.export_openvino
    writer(model, args.output, batch_size=args.batch_size)
    print(f"wrote {args.output}")
    if samples is not None:
        count = min(len(samples), args.verify_samples)
        if args.batch_size:  # the file runs whole batches of its fixed size
            count -= count % args.batch_size
        print(export.verify(model, args.output, samples[:count]))


def _preprocess_function(name):
    """The function a --preprocess name stands for (None for none given), or MODULE:FUNCTION imported."""
    if name is None:
        return None
    if name in PREPROCESSING:
        from keras_attention.backend import keras

        modes = {"signed": "tf", "torch": "torch", "caffe": "caffe"}
        if name == "raw":
            return lambda images: images
        if name == "unit":
            return lambda images: images / 255.0
        return lambda images: keras.applications.imagenet_utils.preprocess_input(images.copy(), mode=modes[name])
    module, _, function = name.partition(":")
    if not function:
        raise ValueError(
            f"--preprocess: unknown {name!r}; expected one of {', '.join(PREPROCESSING)} or MODULE:FUNCTION."
        )
    try:
        found = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--preprocess: cannot import {name!r} ({error}).") from None
    if not callable(found):
        raise ValueError(f"--preprocess: {name!r} is not a function.")
    return found


def _input_shape(text):
    """--input-shape H,W,C (the batch left out)."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 96,96,3 (no batch); got {text!r}")
    return shape


def _check_output(path):
    """The output's format from its extension; a missing parent folder is created (and said)."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in OUTPUT_FORMATS:
        raise ValueError(
            f"cannot tell the format of {path!r} from its extension; expected one of "
            f"{', '.join(OUTPUT_FORMATS)} ({', '.join(OUTPUT_FORMATS.values())})."
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        print(f"creating the folder {parent}")


def _calibration(args, model, saved_model):
    """--representative as samples (an array) or None; a folder read at the model's input size."""
    import numpy as np

    from keras_attention.tflite import calibration

    path = args.representative
    if not path:
        return None
    if os.path.isdir(path):
        calibration.check_folder_calibration(model, path, args.preprocess, what="--representative")
        if model is not None:
            shape = tuple(model.inputs[0].shape)
        else:
            from keras_attention.tflite.saved_model import saved_model_input_specs

            shape = tuple(saved_model_input_specs(saved_model)[0].shape)
        if args.input_shape:
            shape = (None, *args.input_shape)
        return calibration.load_image_folder(
            path, shape, max(100, args.verify_samples), args.preprocess, what="--representative"
        )
    if not path.endswith(".npy"):
        raise ValueError(f"--representative: expected a .npy array or a folder of images; got {path!r}.")
    try:
        return np.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--representative: no file at {path!r}.") from None
    except Exception as error:  # numpy raises ValueError, UnpicklingError, EOFError... for a bad file
        raise ValueError(
            f"--representative: {path!r} is not a readable .npy array ({type(error).__name__}: {error})."
        ) from None


def _convert(args):
    from keras_attention import tflite
    from keras_attention._deploy import load_model_path

    _check_output(args.output)
    args.preprocess = _preprocess_function(args.preprocess)
    model, saved_model = load_model_path(args.model)
    samples = _calibration(args, model, saved_model)
    if args.output.lower().endswith((".onnx", ".xml")):
        return _export(args, model, samples)
    tflite.convert(
        model if model is not None else saved_model,
        quantization=args.quantization,
        representative_data=samples,
        int8_io=args.int8_io,
        path=args.output,
    )
    print(f"wrote {args.output}")
    if samples is not None:
        print(tflite.verify(model if model is not None else saved_model, args.output, samples[: args.verify_samples]))


def _extras():
    """`extra: installed` or what is missing, for each extra of keras-vision-attention."""
    from importlib import metadata

    lines = []
    for extra, distributions in EXTRAS.items():
        missing = []
        for name in distributions:
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                missing.append(name)
        lines.append(f"  [{extra}] " + ("installed" if not missing else f"missing {', '.join(missing)}"))
    return lines


def _info(args):
    from keras_attention import __version__, backend

    print(f"keras_attention {__version__}: {backend.describe()}")
    print('extras (pip install "keras-vision-attention[EXTRA]"):')
    print("\n".join(_extras()))


def main(argv=None):
    from keras_attention import __version__

    parser = argparse.ArgumentParser(prog="keras-attention", description="Convolutional attention for Keras.")
    parser.add_argument("--version", action="version", version=f"keras-vision-attention {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="fine-tune MobileNetV2 with attention and without, quantize to int8 TFLite, compare"
    )
    demo.add_argument("--data", help="image folder, one sub-folder per class (default: scikit-learn's digits)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--fast", action="store_true", help="1 epoch on a subset, run eagerly: a smoke run")
    demo.add_argument("--out", default="keras_attention_demo", help="output folder")
    demo.add_argument("--weights", default=None, help="'imagenet' (needs network) or none (default)")
    demo.add_argument("--size", type=int, default=96, help="input height and width")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the same seed prints the same numbers")
    demo.add_argument(
        "--attention",
        default="cbam",
        metavar="NAME[,NAME...]",
        help="attentions to compare with the plain model (get_attention names); the first is shipped",
    )
    demo.add_argument("--seeds", type=int, default=1, help="runs per model (seeds seed, seed+1, ...): mean and spread")
    demo.add_argument("--max-size", type=int, default=None, help="attention only on feature maps of at most N x N")
    demo.set_defaults(run=_demo)
    convert = commands.add_parser(
        "convert", help=".keras file or SavedModel directory in; .tflite, .onnx or OpenVINO .xml out, verified"
    )
    convert.add_argument("model", help="a .keras/.h5 file or a SavedModel directory")
    convert.add_argument(
        "output",
        help="the file to write; its extension names the format: .tflite, .onnx, or .xml (OpenVINO IR, with its "
        ".bin); any other is refused. A missing parent folder is created.",
    )
    convert.add_argument("--quantization", default="float32", choices=["float32", "float16", "dynamic", "int8"])
    convert.add_argument(
        "--representative",
        help="calibration data (int8), and the data verified on: a .npy array (fed as it is) or a folder of "
        "images, directly or one sub-folder per class (read as raw pixels 0-255, then --preprocess)",
    )
    convert.add_argument(
        "--preprocess",
        help="how a folder's raw pixels become the model's input: "
        + "; ".join(f"{k}: {v}" for k, v in PREPROCESSING.items())
        + "; or MODULE:FUNCTION (a function of a float32 batch). Needed with a folder unless the model rescales "
        "its input itself (a Rescaling/Normalization layer): int8 ranges from raw pixels would ruin the file",
    )
    convert.add_argument(
        "--input-shape",
        type=_input_shape,
        help="H,W,C: the size a model with unknown spatial sizes is called with before ONNX/OpenVINO export, "
        "and folder images are resized to (default: from --representative data)",
    )
    convert.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs too")
    convert.add_argument("--verify-samples", type=int, default=32, help="samples of a .npy to verify on")
    convert.add_argument(
        "--batch-size", type=int, default=None, help=".onnx/.xml: a fixed batch size (default: free where it can be)"
    )
    convert.set_defaults(run=_convert)
    info = commands.add_parser("info", help="which Keras and backend are active, and which extras are installed")
    info.set_defaults(run=_info)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Read by keras_attention._native_logs before TensorFlow is imported; declared here for --help.
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's and LiteRT's C++ log lines")
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError, ImportError) as error:  # expected failures: one line, exit status 2
        if args.debug:
            raise
        print(f"keras-attention {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
