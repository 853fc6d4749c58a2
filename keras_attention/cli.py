"""The `keras-attention` command."""

import argparse
import sys


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
    )


def _export(args, calibration):
    """`convert` to .onnx or OpenVINO .xml: Keras' exporter, then the file verified in its own runtime."""
    import numpy as np

    from keras_attention import export
    from keras_attention.tflite.export import _load_model_path

    if args.quantization != "float32" or args.int8_io:
        raise ValueError(
            f"--quantization {args.quantization}{' --int8-io' if args.int8_io else ''} applies to .tflite; "
            "ONNX and OpenVINO files are written in float32."
        )
    model, _ = _load_model_path(args.model)
    if model is None:
        raise ValueError(f"exporting to {args.output!r} needs a .keras model file; got the SavedModel {args.model!r}.")
    writer = export.export_onnx if args.output.endswith(".onnx") else export.export_openvino
    writer(model, args.output, batch_size=args.batch_size)
    print(f"wrote {args.output}")
    if isinstance(calibration, np.ndarray):
        count = min(len(calibration), args.verify_samples)
        if args.batch_size:  # the file runs whole batches of its fixed size
            count -= count % args.batch_size
        print(export.verify(model, args.output, calibration[:count]))


def _convert(args):
    import numpy as np

    from keras_attention import tflite

    calibration = None
    if args.representative and args.representative.endswith(".npy"):
        try:
            calibration = np.load(args.representative)
        except FileNotFoundError:
            raise FileNotFoundError(f"--representative: no file at {args.representative!r}.") from None
        except Exception as error:  # numpy raises ValueError, UnpicklingError, EOFError... for a bad file
            raise ValueError(
                f"--representative: {args.representative!r} is not a readable .npy array "
                f"({type(error).__name__}: {error})."
            ) from None
    elif args.representative:
        calibration = args.representative
    if args.output.endswith((".onnx", ".xml")):
        return _export(args, calibration)
    tflite.convert(
        args.model,
        quantization=args.quantization,
        representative_data=calibration,
        int8_io=args.int8_io,
        path=args.output,
    )
    print(f"wrote {args.output}")
    if isinstance(calibration, np.ndarray):
        print(tflite.verify(args.model, args.output, calibration[: args.verify_samples]))


def _info(args):
    from keras_attention import __version__, backend

    print(f"keras_attention {__version__}: {backend.describe()}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keras-attention", description="Convolutional attention for Keras.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fine-tune MobileNetV2 + CBAM, quantize to int8 TFLite, verify, report")
    demo.add_argument("--data", help="image folder, one sub-folder per class (default: scikit-learn's digits)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--fast", action="store_true", help="1 epoch on a subset, run eagerly: a smoke run")
    demo.add_argument("--out", default="keras_attention_demo", help="output folder")
    demo.add_argument("--weights", default=None, help="'imagenet' (needs network) or none (default)")
    demo.add_argument("--size", type=int, default=96, help="input height and width")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the same seed prints the same numbers")
    demo.set_defaults(run=_demo)
    convert = commands.add_parser(
        "convert", help=".keras file or SavedModel directory in; .tflite, .onnx or OpenVINO .xml out, verified"
    )
    convert.add_argument("model", help="a .keras/.h5 file or a SavedModel directory")
    convert.add_argument("output", help="the file to write: .tflite, .onnx, or .xml (OpenVINO IR, with its .bin)")
    convert.add_argument("--quantization", default="float32", choices=["float32", "float16", "dynamic", "int8"])
    convert.add_argument(
        "--representative", help="calibration data (int8), and the data verified on: a .npy array or a folder of images"
    )
    convert.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs too")
    convert.add_argument("--verify-samples", type=int, default=32, help="samples of a .npy to verify on")
    convert.add_argument(
        "--batch-size", type=int, default=None, help=".onnx/.xml: a fixed batch size (default: free where it can be)"
    )
    convert.set_defaults(run=_convert)
    info = commands.add_parser("info", help="which Keras and backend are active")
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
