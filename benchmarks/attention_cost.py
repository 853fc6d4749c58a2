"""What each attention costs on the runtime a phone uses: LiteRT + XNNPACK, int8 (Keras 3 QAT) and float32.

Every attention `get_attention` knows is attached on the residual branches of
a mobile backbone (random weights: latency does not depend on them), converted
through Keras 3 QAT to int8 and plainly to float32, and compared with the
plain backbone converted the same way:

* latency in the LiteRT interpreter with XNNPACK at 1, 2 and 4 threads, every
  model of a backbone interleaved with the others (A B C ... A B C ...), the
  ratio to the plain model taken from the same run;
* parameters; multiply-adds of the weight layers and elementwise operations,
  counted from the float32 file (`tflite.multiply_adds`), not estimated;
* TFLite ops added per attention block, the int8 file's size, and whether the
  int8 file is int8 end to end with builtin ops only.

    python benchmarks/attention_cost.py                              # three backbones, every attention
    python benchmarks/attention_cost.py --backbones mbv2_035_96 --threads 1 --runs 30
    python benchmarks/attention_cost.py --attentions cbam,se,eca,coord
    python benchmarks/attention_cost.py --attentions cbam --max-size 14  # only blocks on maps <= 14x14
    python benchmarks/attention_cost.py --backbones hub_resnet18_224,hub_effb0_224 --attentions cbam,se,eca

Prints a markdown table per backbone and writes JSON
(default `benchmarks/results/attention_cost.json`).
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import machine_info, markdown_table, write_json  # noqa: E402
from benchmarks.tflite_latency import interleaved_latency  # noqa: E402

DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "attention_cost.json")
# name: (Keras Applications builder, input size, keyword arguments)
BACKBONES = {
    "mbv2_100_224": ("MobileNetV2", 224, {"alpha": 1.0}),
    "mbv2_035_96": ("MobileNetV2", 96, {"alpha": 0.35}),
    "mbv3s_224": ("MobileNetV3Small", 224, {"include_preprocessing": False}),
}


def _hub_resnet18():
    """keras-hub's `resnet_18_imagenet` architecture (ResNet-18, v1 basic blocks)."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=(224, 224, 3),
    )


def _hub_efficientnet_b0():
    """keras-hub's EfficientNet-B0 architecture (the original v1 configuration)."""
    import keras_hub

    return keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
        stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
        stackwise_input_filters=[32, 16, 24, 40, 80, 112, 192],
        stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
        stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6],
        stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
        stackwise_squeeze_and_excite_ratios=[0.25] * 7,
        stackwise_force_input_filters=[0] * 7,
        stackwise_nores_option=[False] * 7,
        stackwise_width_coefficients=[1.0] * 7,
        stackwise_depth_coefficients=[1.0] * 7,
        stackwise_block_types=["v1"] * 7,
        min_depth=None,
        include_stem_padding=True,
        use_depth_divisor_as_min_depth=True,
        cap_round_filter_decrease=True,
        stem_conv_padding="valid",
        batch_norm_momentum=0.99,
        input_shape=(224, 224, 3),
    )


# keras-hub backbones (`pip install .[hub]`), plain graphs that attach's where="residual" serves:
# name: (builder, input size, label for the table).
HUB_BACKBONES = {
    "hub_resnet18_224": (_hub_resnet18, 224, "keras-hub resnet_18_imagenet"),
    "hub_effb0_224": (_hub_efficientnet_b0, 224, "keras-hub EfficientNet-B0"),
}
BACKBONES.update({name: (label, size, {}) for name, (_, size, label) in HUB_BACKBONES.items()})
# CBAM's parts are not attentions a user picks on their own for a phone model.
SKIPPED = ("channel", "spatial")


def build(backbone, attention=None, max_size=None):
    """The backbone (random init, 1000 classes) behind a [0, 255] -> [-1, 1] Rescaling, with `attention`."""
    import keras_attention as ka
    from keras_attention.backend import keras

    builder, size, kwargs = BACKBONES[backbone]
    if backbone in HUB_BACKBONES:
        trunk = HUB_BACKBONES[backbone][0]()
        pooled = keras.layers.GlobalAveragePooling2D()(trunk.output)
        base = keras.Model(trunk.input, keras.layers.Dense(1000, name="predictions")(pooled))
    else:
        base = getattr(keras.applications, builder)(input_shape=(size, size, 3), weights=None, **kwargs)
    if attention is not None:
        base = ka.attach(base, attention, preserve_outputs=False, max_size=max_size)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    return keras.Model(inputs, base(x), name=f"{backbone}_{attention or 'plain'}")


def int8_file(model, size, seed=0):
    """Keras 3 QAT copy, its ranges set by a few training-mode batches, converted to int8."""
    from keras_attention import quantization, tflite

    qat = quantization.quantize_model(model)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        qat(rng.uniform(0, 255, (8, size, size, 3)).astype("float32"), training=True)
    return tflite.convert(qat, "int8")


def _files(backbone, key, max_size, model, size, cache):
    """(int8, float32) flatbuffers of `model`; with `cache` (a folder) kept there and read back next time."""
    from keras_attention import tflite
    from keras_attention._io import write_bytes

    paths = (
        [os.path.join(cache, f"{backbone}_{key}_{max_size}_{q}.tflite") for q in ("int8", "float32")] if cache else []
    )
    if paths and all(os.path.exists(p) for p in paths):
        return tuple(tflite.load_flatbuffer(p) for p in paths)
    files = (int8_file(model, size), tflite.convert(model, "float32"))
    for path, data in zip(paths, files):
        os.makedirs(cache, exist_ok=True)
        write_bytes(path, data)
    return files


def measure(backbone, attentions, threads, runs, max_size=None, cache=None):
    from keras_attention import tflite
    from keras_attention.backbones import attention_layers

    size = BACKBONES[backbone][1]
    rows = {}
    int8, float32 = {}, {}
    for name in [None, *attentions]:
        start = time.time()
        model = build(backbone, name, max_size if name else None)
        key = name or "plain"
        int8[key], float32[key] = _files(backbone, key, max_size if name else None, model, size, cache)
        inventory = tflite.op_inventory(int8[key])
        rows[key] = {
            "blocks": len(attention_layers(model)),
            "params": int(model.count_params()),
            "multiply_adds": tflite.multiply_adds(float32[key]),
            "int8_ops": len(inventory),
            "int8_size_bytes": len(int8[key]),
            "int8_end_to_end": bool(tflite.is_int8_end_to_end(int8[key])),
            "builtin_only": all(op["builtin"] for op in inventory),
        }
        print(f"{backbone} {key}: built and converted in {time.time() - start:.0f} s", flush=True)
    latency = {
        "int8": interleaved_latency(int8, threads, runs),
        "float32": interleaved_latency(float32, threads[:1], runs),
    }
    plain = rows["plain"]
    for key, row in rows.items():
        row["latency_ms"] = {q: {str(n): ms for n, ms in latency[q][key].items()} for q in latency}
        row["latency_ratio"] = {
            q: {str(n): latency[q][key][n] / latency[q]["plain"][n] for n in latency[q][key]} for q in latency
        }
        row["params_ratio"] = row["params"] / plain["params"]
        row["multiply_adds_ratio"] = row["multiply_adds"]["weights"] / plain["multiply_adds"]["weights"]
        row["elementwise_ratio"] = row["multiply_adds"]["elementwise"] / plain["multiply_adds"]["elementwise"]
        row["ops_per_block"] = (row["int8_ops"] - plain["int8_ops"]) / row["blocks"] if row["blocks"] else 0.0
    return rows


def table(rows, threads):
    headers = ["attention", "blocks", "params", "MAdds", "elementwise", "ops/block", "int8 KiB", "int8 e2e"]
    headers += [f"int8 x{n}t" for n in threads] + [f"float32 x{threads[0]}t"]
    lines = []
    for key, r in rows.items():
        ratio = r["latency_ratio"]
        lines.append(
            [
                key,
                r["blocks"],
                f"{r['params_ratio']:.3f}",
                f"{r['multiply_adds_ratio']:.3f}",
                f"{r['elementwise_ratio']:.2f}",
                f"{r['ops_per_block']:.1f}",
                f"{r['int8_size_bytes'] / 1024:.0f}",
                "yes" if r["int8_end_to_end"] and r["builtin_only"] else "NO",
            ]
            + [f"{ratio['int8'][str(n)]:.3f}" for n in threads]
            + [f"{ratio['float32'][str(threads[0])]:.3f}"]
        )
    return markdown_table(headers, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones",
        default=",".join(b for b in BACKBONES if b not in HUB_BACKBONES),
        help=f"comma-separated, of {list(BACKBONES)} (hub_*: keras-hub, `pip install .[hub]`)",
    )
    parser.add_argument("--attentions", default=None, help="comma-separated names (default: every one)")
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--runs", type=int, default=40, help="timed rounds per thread count (40)")
    parser.add_argument("--max-size", type=int, default=None, help="attach(max_size=): only maps this small")
    parser.add_argument("--cache", default=None, help="keep the .tflite files in this folder; reuse them next time")
    parser.add_argument("--json", default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    from keras_attention.layers import ATTENTIONS

    attentions = args.attentions.split(",") if args.attentions else [n for n in ATTENTIONS if n not in SKIPPED]
    unknown = sorted(set(attentions) - set(ATTENTIONS)) + sorted(set(args.backbones.split(",")) - set(BACKBONES))
    if unknown:
        parser.error(f"unknown attention or backbone {unknown}; expected of {sorted(ATTENTIONS)} and {list(BACKBONES)}")
    threads = tuple(int(t) for t in args.threads.split(","))
    payload = {"machine": machine_info(), "runs": args.runs, "threads": list(threads), "max_size": args.max_size}
    payload["results"] = {}
    for backbone in args.backbones.split(","):
        rows = measure(backbone, attentions, threads, args.runs, args.max_size, args.cache)
        builder, size, kwargs = BACKBONES[backbone]
        print(
            f"\n{builder} {kwargs} at {size}x{size}: ratios to the plain model (LiteRT + XNNPACK, median of "
            f"{args.runs} interleaved runs)\n" + table(rows, threads) + "\n",
            flush=True,
        )
        payload["results"][backbone] = rows
        write_json(args.json, payload)  # after each backbone: a long run keeps what it measured
    return payload


if __name__ == "__main__":
    main()
