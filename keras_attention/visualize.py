"""Pictures of where attention looks: spatial attention maps and Grad-CAM.

`attention_maps(model, images)` returns the spatial gate of every attention
layer that has one (CBAM, SpatialAttention) for the given images;
`grad_cam(model, images, class_index)` is Grad-CAM (Selvaraju et al.), the
visualisation of the CBAM paper's Section 4.3; `save_overlays` writes them as
heat maps over the images to a PNG (matplotlib, no display needed).
"""

import numpy as np

from keras_attention import _compat
from keras_attention._checks import check_int
from keras_attention._io import atomic_path
from keras_attention.backend import keras, require_tensorflow
from keras_attention.layers.cbam import CBAM
from keras_attention.layers.spatial import SpatialAttention


def _single_or_list(inputs):
    """A one-input model's input as a tensor, so calling the probe on an array matches its structure."""
    return inputs[0] if len(inputs) == 1 else inputs


def _spatial_gate(layer, inputs):
    """The spatial gate (batch, H, W) a CBAM/SpatialAttention layer applies to `inputs`."""
    if isinstance(layer, SpatialAttention):
        gate = layer.compute_gate(inputs)
    elif layer.arrangement == "channel_first":
        gate = layer.spatial_attention.compute_gate(layer.channel_attention(inputs))
    else:  # spatial_first and parallel both compute the spatial gate from the block input
        gate = layer.spatial_attention.compute_gate(inputs)
    gate = np.asarray(gate)
    return gate[..., 0] if layer.data_format == "channels_last" else gate[:, 0]


def _is_gate(layer):
    return isinstance(layer, (CBAM, SpatialAttention))


def holds_spatial_gates(layer):
    """True when `layer` (a model, or a backbone nested in one) holds a spatial gate (CBAM,
    SpatialAttention, light CBAM) at any depth."""
    return hasattr(layer, "layers") and any(_is_gate(inner) or holds_spatial_gates(inner) for inner in layer.layers)


def _outer_tensors(layer, model, index, caller):
    """The inputs (index 0) or outputs (1) of `layer`'s call in `model`'s graph, as a flat list."""
    call = _compat.outer_call(layer, model)
    if call is None:
        raise ValueError(
            f"{caller}: layer {layer.name!r} is not called exactly once in model {model.name!r}; expected one "
            "call (a layer shared by two branches has no single input to show)."
        )
    tensors = call[index]
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _gate_inputs(model, inputs):
    """`[(layer, its input value)]` for every spatial-gate layer in `model` given `inputs`, in model order,
    looking inside nested models (each is probed on the value its outer call receives)."""
    top = [layer for layer in model.layers if _is_gate(layer) or holds_spatial_gates(layer)]
    layer_inputs = [_outer_tensors(layer, model, 0, "attention_maps") for layer in top]
    probe = keras.Model(_single_or_list(model.inputs), [t for tensors in layer_inputs for t in tensors])
    values = probe(inputs, training=False)
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    found, start = [], 0
    for layer, tensors in zip(top, layer_inputs):
        count = len(tensors)
        value = values[start : start + count]
        start += count
        if _is_gate(layer):
            found.append((layer, value[0]))
        else:
            found.extend(_gate_inputs(layer, value[0] if count == 1 else value))
    return found


def attention_maps(model, images):
    """Spatial attention maps of every CBAM / SpatialAttention layer in `model`.

    Args:
        model: a functional Keras model (e.g. from `attach`), or one that holds
            such a backbone as a nested model (a classifier around it, a
            Sequential); the layers inside nested models are found too.
        images: a batch the model accepts, `(batch, H, W, C)`.

    Returns:
        A list of `(layer_name, maps)` in model order; `maps` has shape
        `(batch, h, w)` at the layer's resolution, values in the gate's range.
    """
    if not holds_spatial_gates(model):
        raise ValueError(
            f"attention_maps: model {model.name!r} holds no layer with a spatial gate (CBAM or SpatialAttention), "
            "nested models included."
        )
    return [(layer.name, _spatial_gate(layer, x)) for layer, x in _gate_inputs(model, images)]


def last_conv_layer_name(model):
    """Name of the last layer (of `model` itself; a nested backbone counts as one) with a 4-D output."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        call = _compat.outer_call(layer, model)
        outputs = call[1] if call is not None else getattr(layer, "output", None)
        outputs = outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs
        shape = getattr(outputs, "shape", None)
        if shape is not None and len(shape) == 4:
            return layer.name
    raise ValueError(f"grad_cam: model {model.name!r} has no layer with a 4-D output.")


def grad_cam(model, images, class_index=None, layer_name=None):
    """Grad-CAM heat maps: ReLU(sum_k alpha_k A^k), alpha_k the spatial mean of d y_c / d A^k.

    Args:
        model: a functional classifier.
        images: `(batch, H, W, C)` inputs.
        class_index: the class to explain; `None`: each image's top prediction.
        layer_name: the feature map to explain, a layer of `model` itself;
            default the last 4-D layer output (for a classifier around a
            nested backbone: the backbone's output).

    Returns:
        `(batch, h, w)` maps scaled to [0, 1] per image.
    """
    require_tensorflow("grad_cam")
    import tensorflow as tf

    layer_name = layer_name or last_conv_layer_name(model)
    num_classes = model.output.shape[-1]
    class_index = check_int(
        "grad_cam",
        "class_index",
        class_index,
        minimum=0,
        allow_none=True,
        maximum=None if num_classes is None else num_classes - 1,
        note=" (the model's outputs)",
    )
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        inside = [layer.name for layer in model.layers if hasattr(layer, "layers") and layer_name in _names_in(layer)]
        where = f" (it is inside the nested model {inside[0]!r}, whose output is one)" if inside else ""
        raise ValueError(
            f"grad_cam: model {model.name!r} has no layer {layer_name!r} at its top level{where}; expected one of "
            f"its own layers with a 4-D output, e.g. {last_conv_layer_name(model)!r}."
        )
    (features,) = _outer_tensors(model.get_layer(layer_name), model, 1, "grad_cam")
    probe = keras.Model(_single_or_list(model.inputs), [features, model.output])
    images = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        features, logits = probe(images, training=False)
        classes = tf.argmax(logits, axis=-1) if class_index is None else tf.fill([tf.shape(logits)[0]], class_index)
        score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return cam / np.where(peak > 0, peak, 1.0)


def _names_in(model):
    return {layer.name for layer in model.layers} | {
        n for layer in model.layers if hasattr(layer, "layers") for n in _names_in(layer)
    }


def save_overlays(path, images, panels, titles=None, alpha=0.5, dpi=100):
    """Writes a grid PNG: one row per image, the image then each heat map over it.

    Args:
        path: output PNG path.
        images: `(batch, H, W, C)` images (any range; scaled for display).
        panels: list of `(title, maps)` with maps `(batch, h, w)`.
        titles: optional row titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images, dtype="float32")
    if images.ndim != 4:
        raise ValueError(f"save_overlays: expected images (batch, H, W, C); got shape {images.shape}.")
    for title, maps in panels:
        if len(maps) < len(images):
            raise ValueError(
                f"save_overlays: panel {title!r} has {len(maps)} maps for {len(images)} images; "
                "expected one map per image."
            )
    if titles is not None and len(titles) < len(images):
        raise ValueError(f"save_overlays: {len(titles)} titles for {len(images)} images; expected one per image.")
    shown = (images - images.min()) / max(float(np.ptp(images)), 1e-6)
    if shown.shape[-1] == 1:
        shown = shown[..., 0]
    rows, cols = len(images), len(panels) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(shown[r], cmap="gray" if shown.ndim == 3 else None)
        axes[r, 0].set_title(titles[r] if titles else "input", fontsize=8)
        for c, (title, maps) in enumerate(panels, start=1):
            axes[r, c].imshow(shown[r], cmap="gray" if shown.ndim == 3 else None)
            # Drawn over the whole image, bilinearly interpolated from the map's own resolution.
            height, width = images.shape[1:3]
            axes[r, c].imshow(
                np.asarray(maps[r]), cmap="jet", alpha=alpha, interpolation="bilinear", extent=(0, width, height, 0)
            )
            axes[r, c].set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    try:
        with atomic_path(path, "save_overlays") as temporary:
            fig.savefig(temporary, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


__all__ = ["attention_maps", "grad_cam", "last_conv_layer_name", "save_overlays"]
