"""A battery of bad inputs across the public API, beside the tests: what does a user get?

    python tools/bad_input_battery.py [--out battery.json]

Each case is a call with one bad input and the words a clear error must hold (the
function or layer, what it got or what it expects). Outcomes:

- clear:  an exception whose message matches those words;
- vague:  an exception that does not (a raw TensorFlow/NumPy error, no name);
- silent: no exception: a wrong result or lost data went unnoticed;
- crash:  the process died (a segfault in the interpreter, say).

The cases run in a child process that reports each outcome as it goes; when the
child dies the case it was running is a crash and a new child resumes after it.
Run it once per Keras mode (KERAS_BACKEND=tensorflow / jax, TF_USE_LEGACY_KERAS=1);
cases a mode cannot reach (TFLite off TensorFlow) are left out there.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = []


def case(area, expect, tensorflow_only=False):
    def register(fn):
        CASES.append(dict(area=area, id=fn.__name__, expect=expect, tensorflow_only=tensorflow_only, fn=fn))
        return fn

    return register


def _tmp():
    return tempfile.mkdtemp(prefix="battery-")


def _images(n=2, size=8, channels=8, dtype="float32"):
    return np.random.default_rng(0).uniform(0, 1, (n, size, size, channels)).astype(dtype)


def _tiny_model(size=8, classes=3):
    import keras_attention as ka
    from keras_attention.backend import keras

    inputs = keras.Input((size, size, 3))
    x = ka.CBAM(reduction=2)(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(x)))


# ----------------------------------------------------------------------------- layer arguments


def _layer_cases():
    import keras_attention as ka

    bad_args = [
        ("CBAM", lambda: ka.CBAM(reduction=0), r"^CBAM: `reduction` must be an integer >= 1"),
        ("CBAM", lambda: ka.CBAM(reduction=2.5), r"^CBAM: `reduction`"),
        ("CBAM", lambda: ka.CBAM(kernel_size=4), r"^CBAM: `kernel_size` must be a positive odd"),
        ("CBAM", lambda: ka.CBAM(gate="tanh"), r"^CBAM: unknown `gate` 'tanh'"),
        ("CBAM", lambda: ka.CBAM(arrangement="sideways"), r"CBAM.*`arrangement`"),
        ("CBAM", lambda: ka.CBAM(reductoin=4), r"CBAM: unknown keyword argument"),
        ("CBAM", lambda: ka.CBAM(spatial_pooling="min"), r"CBAM: unknown `spatial_pooling` 'min'"),
        ("ChannelAttention", lambda: ka.ChannelAttention(pooling="min"), r"ChannelAttention.*unknown `pooling`"),
        ("ChannelAttention", lambda: ka.ChannelAttention(min_channels=-1), r"ChannelAttention.*`min_channels`"),
        ("SqueezeExcitation", lambda: ka.SqueezeExcitation(pooling="max"), r"SqueezeExcitation.*pooling"),
        ("SqueezeExcitation", lambda: ka.SqueezeExcitation(reduction=-4), r"SqueezeExcitation.*`reduction`"),
        (
            "EfficientChannelAttention",
            lambda: ka.EfficientChannelAttention(gamma=-2),
            r"EfficientChannelAttention.*`gamma`",
        ),
        (
            "EfficientChannelAttention",
            lambda: ka.EfficientChannelAttention(gamma=0),
            r"EfficientChannelAttention.*`gamma`",
        ),
        (
            "EfficientChannelAttention",
            lambda: ka.EfficientChannelAttention(kernel_size=2),
            r"EfficientChannelAttention.*`kernel_size`",
        ),
        ("SpatialAttention", lambda: ka.SpatialAttention(kernel_size=0), r"SpatialAttention.*`kernel_size`"),
        ("SpatialAttention", lambda: ka.SpatialAttention(pooling=()), r"SpatialAttention.*`pooling`"),
        ("SpatialAttention", lambda: ka.SpatialAttention(data_format="NHWC"), r"SpatialAttention.*`data_format`"),
        ("ContextEnhancement", lambda: ka.ContextEnhancement(filters=0), r"ContextEnhancement.*`filters`"),
        ("LightRPNHead", lambda: ka.LightRPNHead(num_anchors=0), r"LightRPNHead.*`num_anchors`"),
        (
            "RPNGuidedSpatialAttention",
            lambda: ka.RPNGuidedSpatialAttention(gate="relu"),
            r"RPNGuidedSpatialAttention.*`gate`",
        ),
        ("SAGMaskHead", lambda: ka.SAGMaskHead(num_classes=0), r"SAGMaskHead.*`num_classes`"),
        ("SAGMaskHead", lambda: ka.SAGMaskHead(3, num_convs=-1), r"SAGMaskHead.*`num_convs`"),
        ("RoIAlign", lambda: ka.RoIAlign(), r"RoIAlign.*`strides`"),
        ("RoIAlign", lambda: ka.RoIAlign(strides=4, sampling_ratio=0), r"RoIAlign.*sampling_ratio"),
        ("RoIAlign", lambda: ka.RoIAlign(strides=4, output_size=0), r"RoIAlign.*`output_size`"),
    ]
    for i, (name, make, expect) in enumerate(bad_args):
        fn = (lambda make: lambda: make())(make)  # noqa: B023 - bound by the outer lambda
        fn.__name__ = f"{name}_argument_{i}"
        case("layer arguments", expect)(fn)


_layer_cases()


# ----------------------------------------------------------------------------- layer inputs


@case("layer inputs", r"CBAM: expected a floating-point input; got dtype int32")
def cbam_on_integer_images():
    import keras_attention as ka

    ka.CBAM(reduction=2)(_images(dtype="int32"))


@case("layer inputs", r"SqueezeExcitation: expected a floating-point input")
def se_on_uint8_images():
    import keras_attention as ka

    ka.SqueezeExcitation(reduction=2)((_images() * 255).astype("uint8"))


@case("layer inputs", r"CBAM: expected a 4-D input .* rank 3")
def cbam_on_rank_3():
    import keras_attention as ka

    ka.CBAM(reduction=2)(_images()[0])


@case("layer inputs", r"SpatialAttention: the channel dimension")
def spatial_unknown_channels():
    import keras_attention as ka

    ka.SpatialAttention(data_format="channels_first").build((None, None, 8, 8))


@case("layer inputs", r"ContextEnhancement.*(layout|channels_last)")
def cem_channels_first_data_as_channels_last():
    import keras_attention as ka

    ka.ContextEnhancement(filters=8)([np.zeros((1, 16, 20, 20), "float32"), np.zeros((1, 32, 10, 10), "float32")])


@case("layer inputs", r"RoIAlign.*(batch|images)")
def roi_align_boxes_for_fewer_images():
    import keras_attention as ka

    features = np.zeros((2, 8, 8, 4), "float32")
    boxes = np.zeros((1, 3, 4), "float32")
    ka.RoIAlign(strides=4, output_size=2)([features, boxes])


@case("layer inputs", r"RoIAlign.*(fine|order|coarse)")
def roi_align_levels_coarse_first():
    import keras_attention as ka

    levels = [np.zeros((1, 4, 4, 4), "float32"), np.zeros((1, 8, 8, 4), "float32")]
    ka.RoIAlign(strides=(4, 8), output_size=2)([levels, np.zeros((1, 2, 4), "float32")])


@case("layer inputs", r"RoIAlign: boxes must have shape \(batch, num_boxes, 4\)")
def roi_align_boxes_of_three():
    import keras_attention as ka

    ka.RoIAlign(strides=4)([np.zeros((1, 8, 8, 4), "float32"), np.zeros((1, 5, 3), "float32")])


@case("layer inputs", r"SAGMaskHead: expected a floating-point input")
def sag_on_integers():
    import keras_attention as ka

    ka.SAGMaskHead(num_classes=2, filters=4, num_convs=1)(np.zeros((2, 4, 4, 4), "int32"))


# ----------------------------------------------------------------------------- losses


def _mask_inputs():
    rng = np.random.default_rng(0)
    return (
        rng.uniform(0, 1, (2, 3, 4, 4)).astype("float32"),
        rng.normal(size=(2, 3, 4, 4, 2)).astype("float32"),
        np.array([[0, 1, -1], [1, 0, 0]], "int32"),
    )


@case("losses", r"mask_loss: targets must be .* not broadcast")
def mask_loss_broadcast_targets():
    from keras_attention.losses import mask_loss

    t, lg, c = _mask_inputs()
    mask_loss(t[:, :1], lg, c)


@case("losses", r"mask_loss: classes must be < K")
def mask_loss_class_out_of_range():
    from keras_attention.losses import mask_loss

    t, lg, c = _mask_inputs()
    mask_loss(t, lg, np.where(c == 1, 2, c))


@case("losses", r"mask_loss: classes must be integers")
def mask_loss_float_classes():
    from keras_attention.losses import mask_loss

    t, lg, c = _mask_inputs()
    mask_loss(t, lg, c.astype("float32") + 0.5)


@case("losses", r"NaN")
def mask_loss_tensor_class_out_of_range_is_nan():
    from keras_attention.backend import ops
    from keras_attention.losses import mask_loss

    t, lg, c = _mask_inputs()
    value = float(np.asarray(mask_loss(t, lg, ops.convert_to_tensor(np.where(c == 1, 2, c)))))
    if np.isnan(value):
        raise ValueError("NaN: the out-of-range class is loud")


@case("losses", r"crop_mask_targets: `size` must be an integer >= 1")
def crop_mask_size_zero():
    from keras_attention.losses import crop_mask_targets

    crop_mask_targets(np.zeros((1, 8, 8)), np.array([[0, 0, 4, 4]], "float32"), size=0)


@case("losses", r"crop_mask_targets.*(NaN|finite)")
def crop_mask_nan_box():
    from keras_attention.losses import crop_mask_targets

    crop_mask_targets(np.zeros((1, 8, 8)), np.array([[0, np.nan, 4, 4]], "float32"), size=4)


@case("losses", r"encode_mask_targets: classes must be integers")
def encode_float_classes():
    from keras_attention.losses import encode_mask_targets

    encode_mask_targets(np.zeros((1, 4, 4)), np.array([1.5]), 3)


@case("losses", r"encode_mask_targets: `num_classes` must be an integer >= 1")
def encode_zero_classes():
    from keras_attention.losses import encode_mask_targets

    encode_mask_targets(np.zeros((1, 4, 4)), np.array([0]), 0)


# ----------------------------------------------------------------------------- data


@case("data", r"shapes: `num_images` must be an integer >= 1; got -1")
def shapes_negative_count():
    from keras_attention.data import shapes

    shapes(num_images=-1)


@case("data", r"shapes:.*min_shapes")
def shapes_min_above_max():
    from keras_attention.data import shapes

    shapes(num_images=2, min_shapes=6)


@case("data", r"digits: `test_fraction` must be a number strictly between 0 and 1")
def digits_fraction_above_one():
    from keras_attention.data import digits

    digits(test_fraction=1.5)


@case("data", r"digits: `size` must be an integer >= 1; got 0")
def digits_size_zero():
    from keras_attention.data import digits

    digits(size=0)


@case("data", r"digits: `channels` must be 1 or 3")
def digits_channels_two():
    from keras_attention.data import digits

    digits(channels=2)


# ----------------------------------------------------------------------------- attach


@case("attach", r"attach.*(already|twice)")
def attach_twice():
    import keras_attention as ka

    ka.attach(ka.attach(_resnetish(), "cbam"), "cbam")


def _resnetish():
    from keras_attention.backend import keras

    inputs = keras.Input((8, 8, 8))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.Add()([inputs, x]))


@case("attach", r"attach: where='residual' matches nothing.*where='stages'")
def attach_residual_on_vgg_like():
    import keras_attention as ka
    from keras_attention.backend import keras

    inputs = keras.Input((8, 8, 3))
    ka.attach(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs)))


@case("attach", r"attach: unknown `attention`")
def attach_unknown_attention():
    import keras_attention as ka

    ka.attach(_resnetish(), "transformer")


@case("attach", r"attach.*(not a|expected a).*(model|Model)")
def attach_not_a_model():
    import keras_attention as ka

    ka.attach("resnet50")


@case("attach", r"attach.*(unknown|no) layer.*'nope'")
def attach_unknown_layer_name():
    import keras_attention as ka

    ka.attach(_resnetish(), where=["nope"])


# ----------------------------------------------------------------------------- demo and CLI


@case("demo", r"keras_attention demo: `epochs` must be an integer >= 1; got -3")
def demo_negative_epochs():
    from keras_attention.demo import run_demo

    run_demo(out=os.path.join(_tmp(), "out"), epochs=-3)


@case("demo", r"keras_attention demo: `size` must be an integer >= 32")
def demo_size_zero():
    from keras_attention.demo import run_demo

    run_demo(out=os.path.join(_tmp(), "out"), size=0)


@case("demo", r"is a file, not a folder")
def demo_out_under_a_file():
    from keras_attention.demo import run_demo

    root = _tmp()
    open(os.path.join(root, "a_file"), "w").close()
    run_demo(out=os.path.join(root, "a_file", "out"))


@case("demo", r"demo --data: .*not a folder")
def demo_missing_data_folder():
    from keras_attention.demo import load_image_folder

    load_image_folder(os.path.join(_tmp(), "missing"), 32)


@case("cli", r"^2$")
def cli_missing_model_is_exit_status_2():
    from keras_attention.cli import main

    root = _tmp()
    status = main(["convert", os.path.join(root, "missing.keras"), os.path.join(root, "m.tflite")])
    raise SystemExit(status)


# ----------------------------------------------------------------------------- visualize and distribute


@case("visualize", r"grad_cam: `class_index` must be an integer in \[0, 2\]", tensorflow_only=True)
def grad_cam_class_out_of_range():
    from keras_attention import visualize

    visualize.grad_cam(_tiny_model(), np.zeros((2, 8, 8, 3), "float32"), class_index=3)


@case("visualize", r"save_overlays.*(maps|images)")
def save_overlays_fewer_maps_than_images():
    from keras_attention import visualize

    visualize.save_overlays(
        os.path.join(_tmp(), "o.png"), np.zeros((3, 8, 8, 3), "float32"), [("gate", np.zeros((2, 8, 8), "float32"))]
    )


@case("distribute", r"data_parallel: no device '/gpu:7'")
def data_parallel_missing_gpu():
    from keras_attention import distribute

    distribute.data_parallel(["/gpu:7"])


@case("distribute", r"data_parallel: `devices` is an empty list")
def data_parallel_empty():
    from keras_attention import distribute

    distribute.data_parallel([])


# ----------------------------------------------------------------------------- TFLite


@case("tflite", r"convert.*(Keras model|keras.Model).*None", tensorflow_only=True)
def convert_none():
    from keras_attention import tflite

    tflite.convert(None)


@case("tflite", r"(NaN|finite)", tensorflow_only=True)
def convert_nan_calibration():
    from keras_attention import tflite

    data = np.full((4, 8, 8, 3), np.nan, "float32")
    tflite.convert(_tiny_model(), "int8", representative_data=data)


@case("tflite", r"(8, 8, 3)|8x8|spatial|shape", tensorflow_only=True)
def convert_calibration_of_the_wrong_size():
    from keras_attention import tflite

    tflite.convert(_tiny_model(), "int8", representative_data=np.zeros((4, 16, 16, 3), "float32"))


@case("tflite", r"representative", tensorflow_only=True)
def convert_int8_without_data():
    from keras_attention import tflite

    tflite.convert(_tiny_model(), "int8")


@case("tflite", r"representative_data 'calibration images' is not a (directory|folder)", tensorflow_only=True)
def convert_string_data_that_is_no_path():
    from keras_attention import tflite

    tflite.convert(_tiny_model(), "int8", representative_data="calibration images")


@case("tflite", r"not a readable Keras model file", tensorflow_only=True)
def convert_empty_keras_file():
    from keras_attention import tflite

    path = os.path.join(_tmp(), "m.keras")
    open(path, "wb").close()
    tflite.convert(path)


@case("tflite", r"got no samples", tensorflow_only=True)
def run_on_empty_data():
    from keras_attention import tflite

    tflite.run(tflite.convert(_tiny_model()), np.zeros((0, 8, 8, 3), "float32"))


@case("tflite", r"(no samples|empty)", tensorflow_only=True)
def verify_on_empty_data():
    from keras_attention import tflite

    model = _tiny_model()
    tflite.verify(model, tflite.convert(model), np.zeros((0, 8, 8, 3), "float32"), latency_runs=0)


@case("tflite", r"keras_attention.tflite.*(cannot load|not a TFLite|flatbuffer)", tensorflow_only=True)
def run_on_random_bytes():
    from keras_attention import tflite

    tflite.run(np.random.default_rng(0).bytes(4000), np.zeros((1, 8, 8, 3), "float32"))


def _int8_with_scale(scale):
    """A one-convolution int8 model, data, and its `.tflite` with one activation scale set to `scale`."""
    from keras_attention import tflite
    from keras_attention.backend import keras
    from tests.kit.flatbuffer_edits import with_last_activation_scale  # the children run with ROOT on PYTHONPATH

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    data = np.random.default_rng(0).uniform(size=(16, 8, 8, 3)).astype("float32")
    good = tflite.convert(model, "int8", representative_data=data)
    return model, data, with_last_activation_scale(good, scale)


@case("tflite", r"never varied", tensorflow_only=True)
def verify_nan_scale():
    from keras_attention import tflite

    model, data, bad = _int8_with_scale(float("nan"))
    tflite.verify(model, bad, data[:2], latency_runs=0)


@case("tflite", r"never varied", tensorflow_only=True)
def run_zero_scale():
    from keras_attention import tflite

    _, data, bad = _int8_with_scale(0.0)
    tflite.run(bad, data[:2])


# ----------------------------------------------------------------------------- runner


def _mode():
    from keras_attention.backend import BACKEND, IS_LEGACY

    return "tf_keras" if IS_LEGACY else f"keras3-{BACKEND}"


def _run_child(start, report_path):
    """Runs the cases from `start`, appending one JSON line per outcome; 'begin' lines mark progress."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from keras_attention.backend import BACKEND

    with open(report_path, "a") as report:
        for index in range(start, len(CASES)):
            spec = CASES[index]
            if spec["tensorflow_only"] and BACKEND != "tensorflow":
                continue
            report.write(json.dumps({"begin": index}) + "\n")
            report.flush()
            try:
                spec["fn"]()
                outcome, message = "silent", ""
            except BaseException as error:  # noqa: BLE001 - classifying every outcome is the point
                message = str(error) if not isinstance(error, SystemExit) else str(error.code)
                outcome = "clear" if re.search(spec["expect"], message, re.S) else "vague"
            report.write(json.dumps({"index": index, "outcome": outcome, "message": message[:300]}) + "\n")
            report.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the outcomes as JSON here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _run_child(args.child, args.report)
        return 0

    report_path = os.path.join(_tmp(), "outcomes.jsonl")
    outcomes, start = {}, 0
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while start < len(CASES):
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(start), "--report", report_path],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [json.loads(line) for line in open(report_path)]
        for line in lines:
            if "outcome" in line:
                outcomes[line["index"]] = line
        if child.returncode == 0:
            break
        begun = [line["begin"] for line in lines if "begin" in line]
        if not begun or begun[-1] in outcomes:
            sys.exit(f"the battery's child process failed outside a case:\n{child.stderr[-3000:]}")
        outcomes[begun[-1]] = {"index": begun[-1], "outcome": "crash", "message": f"exit status {child.returncode}"}
        start = begun[-1] + 1

    mode = _mode()
    rows = [
        dict(area=CASES[i]["area"], case=CASES[i]["id"], **{k: v for k, v in o.items() if k != "index"})
        for i, o in sorted(outcomes.items())
    ]
    counts = {kind: sum(r["outcome"] == kind for r in rows) for kind in ("clear", "vague", "silent", "crash")}
    print(f"bad-input battery, {mode}: {len(rows)} cases")
    print("| area | cases | clear | vague | silent | crash |\n| --- | --- | --- | --- | --- | --- |")
    for area in dict.fromkeys(r["area"] for r in rows):
        in_area = [r for r in rows if r["area"] == area]
        print(
            f"| {area} | {len(in_area)} | "
            + " | ".join(str(sum(r["outcome"] == kind for r in in_area)) for kind in counts)
            + " |"
        )
    print(f"| all | {len(rows)} | " + " | ".join(str(v) for v in counts.values()) + " |")
    for r in rows:
        if r["outcome"] != "clear":
            print(f"  {r['outcome'].upper()}: {r['area']} / {r['case']}: {r['message'][:200]}")
    if args.out:
        sys.path.insert(0, ROOT)
        from keras_attention._io import write_json

        write_json(args.out, {"mode": mode, "counts": counts, "cases": rows}, "bad_input_battery")
    return 1 if counts["vague"] + counts["silent"] + counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
