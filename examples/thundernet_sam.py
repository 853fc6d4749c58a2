"""ThunderNet's CEM, light RPN and RPN-guided spatial attention on synthetic shapes.

The front end of a light two-stage detector, as in ThunderNet (Qin et al.,
ICCV 2019), on `keras_attention.data.shapes` (generated images of circles,
squares and triangles with their boxes; nothing is downloaded):

    image -> small CNN backbone -> C4, C5
          -> ContextEnhancement(245)                 F_CEM
          -> LightRPNHead(256)                       F_RPN, objectness, box deltas
          -> RPNGuidedSpatialAttention([F_CEM, F_RPN])   F_SAM = F_CEM * sigmoid(BN(theta(F_RPN)))
          -> per-location head on F_SAM (the R-CNN stage's stand-in)

Objectives, both per RPN location (a location is foreground when its centre
lies inside a ground-truth box): the RPN's objectness is trained for
foreground/background, and the head on F_SAM classifies each location as
background or one of the three shapes. The head's loss reaches the RPN
features only through SAM (the paper's second purpose of SAM). Nothing
supervises the attention itself.

Two SAMs are trained, one after the other, and measured on held-out images:
the paper's (one gate per CEM channel, `per_channel=True`) and one spatial
gate shared by all channels (`per_channel=False`). For each it prints the
gate's mean (over its channels) inside the boxes divided by its mean outside,
and it saves `thundernet_sam.png`: the images with their boxes, both attention
maps over them and the RPN's objectness. What to expect (Keras 3/TensorFlow,
default run): the shared gate opens on the shapes (ratio about 1.7); the
paper's per-channel gate opens some channels on the shapes and closes more,
and its channel mean is *lower* on the shapes (about 0.75) — its channels, not
their average, tell the shapes from the background.

    python examples/thundernet_sam.py [--epochs 8] [--variant both|paper|shared] [--fast] [--out DIR]

The backbone's C4 and C5 are at strides 4 and 8 (ThunderNet's SNet: 16 and 32
on 320-pixel images) so that a 64-pixel image still gives a 16x16 RPN map.
"""

import argparse
import os
import time
import warnings

import numpy as np

import keras_attention as ka
from keras_attention.backend import BACKEND, IS_LEGACY, keras
from keras_attention.data import shapes

STRIDE = 4  # of C4, the CEM/RPN/SAM map


def location_targets(boxes, num_shapes, classes, grid, stride=STRIDE):
    """Per-location labels on the `grid x grid` RPN map: 0 background, 1 + shape class inside a box.

    A location is inside a box `(y1, x1, y2, x2)` when its centre is.
    """
    centres = (np.arange(grid) + 0.5) * stride
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    labels = np.zeros((len(boxes), grid, grid), "int32")
    for i in range(len(boxes)):
        for k in range(num_shapes[i]):
            y1, x1, y2, x2 = boxes[i, k]
            labels[i][(yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)] = 1 + classes[i, k]
    return labels


def box_pixels(boxes, num_shapes, size):
    """(N, size, size) bool: pixels inside any ground-truth box."""
    inside = np.zeros((len(boxes), size, size), bool)
    for i in range(len(boxes)):
        for k in range(num_shapes[i]):
            y1, x1, y2, x2 = np.round(boxes[i, k]).astype(int)
            inside[i, y1:y2, x1:x2] = True
    return inside


def _conv_bn_relu(x, filters, strides, name):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    # momentum 0.9 (PyTorch's default, as in the ThunderNet layers): short runs' moving statistics settle.
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_model(image_size=64, channels=245, filters=256, num_anchors=1, per_channel=True):
    """Returns `(model, features)`: the trainable model and a model giving `[F_CEM, F_RPN]`."""
    image = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(image)
    x = _conv_bn_relu(x, 16, 2, "stem")
    x = _conv_bn_relu(x, 32, 1, "stage3")
    c4 = _conv_bn_relu(_conv_bn_relu(x, 48, 2, "stage4a"), 48, 1, "stage4b")  # stride 4
    c5 = _conv_bn_relu(_conv_bn_relu(c4, 96, 2, "stage5a"), 96, 1, "stage5b")  # stride 8
    cem = ka.ContextEnhancement(channels, name="cem")([c4, c5])
    rpn_features, objectness, _ = ka.LightRPNHead(num_anchors, filters=filters, name="rpn")(cem)
    sam = ka.RPNGuidedSpatialAttention(per_channel=per_channel, name="sam")([cem, rpn_features])
    head = keras.layers.Conv2D(4, 1, name="head")(sam)  # background, circle, square, triangle
    model = keras.Model(image, {"objectness": objectness, "head": head}, name="thundernet_sam")
    features = keras.Model(image, [cem, rpn_features], name="cem_rpn_features")
    return model, features


def sam_attention(model, features, images):
    """SAM's gate for `images`: (N, h, w, channels), float32, in (0, 1)."""
    cem, rpn = features(images, training=False)
    return np.asarray(model.get_layer("sam").compute_gate([cem, rpn], training=False))


def attention_statistics(gate, boxes, num_shapes, image_size):
    """Where SAM's attention is, measured on the image grid.

    Returns a dict: `ratio` = mean of the channel-averaged gate on pixels inside
    the boxes / its mean outside; `inside`, `outside` those means; and per
    channel, how many channels are more open on the shapes than on the
    background (`fg_channels`) and the mean |difference| (`selectivity`).
    """
    scale = image_size // gate.shape[1]
    inside = box_pixels(boxes, num_shapes, image_size)
    # Pixels inside the boxes per map cell: the same as upsampling the gate to the image (nearest, like
    # the CEM) and averaging over pixels, without a (N, 64, 64, channels) array.
    n, h, w = gate.shape[:3]
    weight_in = inside.reshape(n, h, scale, w, scale).sum(axis=(2, 4)).astype("float64")
    weight_out = scale * scale - weight_in
    fg = np.einsum("nhw,nhwc->c", weight_in, gate) / weight_in.sum()
    bg = np.einsum("nhw,nhwc->c", weight_out, gate) / weight_out.sum()
    return dict(
        ratio=float(fg.mean() / bg.mean()),
        inside=float(fg.mean()),
        outside=float(bg.mean()),
        fg_channels=int((fg > bg).sum()),
        channels=int(gate.shape[-1]),
        selectivity=float(np.abs(fg - bg).mean()),
    )


def save_figure(path, images, boxes, num_shapes, rows, count=4):
    """`rows`: list of (title, maps (N, h, w) in [0, 1] or None for the plain image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = min(count, len(images))
    size = images.shape[1]
    extent = (0, size, size, 0)
    fig, axes = plt.subplots(len(rows), count, figsize=(2.4 * count, 2.5 * len(rows)), squeeze=False)
    shown = None
    for col in range(count):
        for row, (title, maps) in enumerate(rows):
            ax = axes[row, col]
            ax.imshow(np.clip(images[col], 0, 255).astype("uint8"), extent=extent)
            if maps is not None:
                shown = ax.imshow(
                    maps[col], cmap="jet", alpha=0.55, extent=extent, vmin=0, vmax=1, interpolation="nearest"
                )
            for k in range(num_shapes[col]):
                y1, x1, y2, x2 = boxes[col, k]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.02)
    fig.suptitle("ThunderNet SAM on held-out shapes: F_SAM = F_CEM * sigmoid(BN(theta(F_RPN)))", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def train_and_measure(data, labels, train, test, image_size, epochs, per_channel, jit, seed, channels=245, filters=256):
    """Trains one model (SAM with a per-channel or a shared gate) and measures its attention."""
    images, boxes, counts = data["images"], data["boxes"], data["num_shapes"]
    keras.utils.set_random_seed(seed)
    model, features = build_model(image_size, channels=channels, filters=filters, per_channel=per_channel)
    steps = epochs * (len(images[train]) // 32)
    model.compile(
        # Cosine decay to zero: the attention map settles instead of swinging with the last steps.
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, max(steps, 1))),
        loss={
            "objectness": keras.losses.BinaryCrossentropy(from_logits=True),
            "head": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        },
        jit_compile=jit,
    )
    targets = {"objectness": (labels > 0).astype("float32")[..., None], "head": labels}
    # The RPN's box-delta head has no objective here (no anchors are matched): Keras 3 warns once.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
    start = time.time()
    model.fit(images[train], {k: v[train] for k, v in targets.items()}, batch_size=32, epochs=epochs, verbose=0)
    seconds = time.time() - start
    predictions = model.predict(images[test], verbose=0)
    objectness, head = np.asarray(predictions["objectness"]), np.asarray(predictions["head"])
    gate = sam_attention(model, features, images[test])
    stats = attention_statistics(gate, boxes[test], counts[test], image_size)
    stats.update(
        seconds=seconds,
        rpn_accuracy=float(np.mean((objectness[..., 0] > 0) == (labels[test] > 0))),
        head_accuracy=float(np.mean(head.argmax(-1) == labels[test])),
        gate=gate,
        objectness=objectness,
        parameters=model.count_params(),
    )
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images", type=int, default=1024, help="training images")
    parser.add_argument("--channels", type=int, default=None, help="CEM channels (default 245, --fast 64)")
    parser.add_argument("--filters", type=int, default=None, help="RPN channels (default 256, --fast 64)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="a smoke run (under a minute on CPU): 3 epochs on 256 images, 64-channel CEM and "
        "RPN; its attention numbers mean little",
    )
    parser.add_argument("--out", default="keras_attention_demo", help="where to write thundernet_sam.png")
    parser.add_argument(
        "--jit",
        action="store_true",
        help="compile with XLA (jit_compile=True); off by default because XLA's CPU "
        "depthwise-convolution gradient is slow",
    )
    parser.add_argument(
        "--variant",
        choices=("both", "paper", "shared"),
        default="both",
        help="SAM with the paper's per-channel gate, one shared spatial gate, or both",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    image_size, test_images = 64, 64
    epochs, train_images = args.epochs, args.images
    channels, filters = args.channels or 245, args.filters or 256
    if args.fast:
        epochs, train_images = 3, 256
        channels, filters = args.channels or 64, args.filters or 64
    data = shapes(num_images=train_images + test_images, image_size=image_size, seed=args.seed)
    boxes, classes, counts = data["boxes"], data["classes"], data["num_shapes"]
    grid = image_size // STRIDE
    labels = location_targets(boxes, counts, classes, grid)
    train, test = slice(0, train_images), slice(train_images, None)

    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__} on {BACKEND}"
    print(
        f"ThunderNet CEM ({channels}) -> RPN ({filters}) -> SAM on {train_images} shapes images "
        f"({image_size} px), {epochs} epochs, "
        f"{mode}{' with XLA' if args.jit else ''}; held out: {test_images} images"
    )
    results = {}
    variants = {"both": (True, False), "paper": (True,), "shared": (False,)}[args.variant]
    for per_channel in variants:
        name = "paper: one gate per CEM channel" if per_channel else "one spatial gate shared by all channels"
        stats = train_and_measure(
            data, labels, train, test, image_size, epochs, per_channel, args.jit, args.seed, channels, filters
        )
        results[per_channel] = stats
        print(
            f"\nSAM per_channel={per_channel} ({name}); {stats['parameters']:,} parameters, "
            f"trained in {stats['seconds']:.1f}s"
        )
        print(f"  held-out RPN foreground/background accuracy per location: {stats['rpn_accuracy']:.4f}")
        print(
            f"  held-out head (background/circle/square/triangle) accuracy per location: {stats['head_accuracy']:.4f}"
        )
        print(
            f"  SAM attention (mean over gate channels): inside boxes {stats['inside']:.3f}, "
            f"outside {stats['outside']:.3f}"
        )
        print(
            f"  SAM attention ratio per_channel={per_channel} (mean inside boxes / mean outside): {stats['ratio']:.3f}"
        )
        if per_channel:
            print(
                f"  gate channels more open on the shapes than on the background: {stats['fg_channels']} of "
                f"{stats['channels']}; mean |inside - outside| per channel: {stats['selectivity']:.3f}"
            )

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "thundernet_sam.png")
    rows = [("input and boxes", None)]
    if False in results:
        shared = results[False]
        rows.append((f"SAM, shared gate\n(ratio {shared['ratio']:.2f})", shared["gate"][..., 0]))
    if True in results:
        paper = results[True]
        rows.append(
            (
                f"SAM, per-channel gate (paper),\nmean of {paper['channels']} channels (ratio {paper['ratio']:.2f})",
                paper["gate"].mean(axis=-1),
            )
        )
    last = results[variants[-1]]
    rows.append(("RPN objectness", 1 / (1 + np.exp(-last["objectness"][..., 0]))))
    save_figure(path, data["images"][test], data["boxes"][test], data["num_shapes"][test], rows)
    print(f"\nsaved {path}")
    return {k: {m: v for m, v in r.items() if m not in ("gate", "objectness")} for k, r in results.items()}


if __name__ == "__main__":
    main()
