"""The small models several test files share (one place for them, not one test file importing another)."""

import numpy as np

import keras_attention as ka
from keras_attention.backend import keras
from tests.kit.layer_reference import randomize_weights

L = keras.layers


def user_cnn(input_shape=(32, 32, 3), classes=10):
    """A hand-written functional CNN: 3 residual blocks, 3 resolutions, an SE side branch.

    Block a: identity shortcut given second, Dropout between the last BN and
    the add. Block b: strided, projection shortcut given first, followed by a
    squeeze-excitation (Multiply, not a residual). Block c: the add written as
    `x + y` (a Keras 3 operation / a tf_keras TFOpLambda, not an Add layer).
    """
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(16, 3, padding="same", name="stem_conv")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)

    y = L.Conv2D(16, 3, padding="same", name="a_conv1")(x)
    y = L.BatchNormalization(name="a_bn1")(y)
    y = L.ReLU(name="a_relu1")(y)
    y = L.Conv2D(16, 3, padding="same", name="a_conv2")(y)
    y = L.BatchNormalization(name="a_bn2")(y)
    y = L.Dropout(0.1, name="a_drop")(y)
    x = L.Add(name="a_add")([y, x])
    x = L.ReLU(name="a_out")(x)

    y = L.Conv2D(32, 3, strides=2, padding="same", name="b_conv1")(x)
    y = L.BatchNormalization(name="b_bn1")(y)
    y = L.ReLU(name="b_relu1")(y)
    y = L.Conv2D(32, 3, padding="same", name="b_conv2")(y)
    y = L.BatchNormalization(name="b_bn2")(y)
    s = L.Conv2D(32, 1, strides=2, name="b_proj")(x)
    s = L.BatchNormalization(name="b_proj_bn")(s)
    x = L.Add(name="b_add")([s, y])
    x = L.ReLU(name="b_out")(x)
    se = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    se = L.Conv2D(8, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(32, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_scale")([x, se])

    x = L.Conv2D(64, 3, strides=2, padding="same", name="c_conv1")(x)
    x = L.BatchNormalization(name="c_bn1")(x)
    x = L.ReLU(name="c_relu1")(x)
    y = L.Conv2D(64, 3, padding="same", name="c_conv2")(x)
    y = L.BatchNormalization(name="c_bn2")(y)
    x = x + y
    x = L.ReLU(name="c_out")(x)

    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="user_cnn")


USER_CNN_RESIDUAL = ["a_bn2", "b_bn2", "c_bn2"]  # by construction
USER_CNN_STAGES = ["a_out", "se_scale", "c_out"]  # last layer at 32x32, 16x16, 8x8


def images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, size, size, 3)).astype("float32")


def every_layer_model():
    """One model holding every public attention layer and their main options, both data formats."""
    inputs = keras.Input((12, 10, 32))
    channels_first = keras.layers.Permute((3, 1, 2))(inputs)
    branches = [
        ka.CBAM(reduction=8)(inputs),
        ka.CBAM(reduction=8, arrangement="parallel", use_batchnorm=True, gate="hard_sigmoid")(inputs),
        ka.CBAM(reduction=8, arrangement="spatial_first", start_as_identity=True)(inputs),
        ka.ChannelAttention(reduction=4, pooling="max", use_bias=False)(inputs),
        ka.SpatialAttention(kernel_size=3, use_batchnorm=True, pooling=("avg",))(inputs),
        ka.SqueezeExcitation(reduction=4)(inputs),
        ka.EfficientChannelAttention()(inputs),
        ka.CBAM(reduction=8, data_format="channels_first")(channels_first),
        ka.EfficientChannelAttention(kernel_size=5, data_format="channels_first")(channels_first),
    ]
    model = keras.Model(inputs, branches)
    for layer in model.layers:
        if layer.weights:
            randomize_weights(layer, seed=len(layer.name))
    return model


def zoo_model():
    """One model holding every attention of the zoo (timm's forms and others), both data formats."""
    inputs = keras.Input((12, 10, 32))
    channels_first = keras.layers.Permute((3, 1, 2))(inputs)
    branches = [
        ka.CoordinateAttention()(inputs),
        ka.SimpleCoordinateAttention(residual=True)(inputs),
        ka.EfficientLocalAttention()(inputs),
        ka.StripAttention()(inputs),
        ka.EffectiveSqueezeExcitation()(inputs),
        ka.CircularEfficientChannelAttention()(inputs),
        ka.EfficientChannelAttentionMLP()(inputs),
        ka.LightCBAM(reduction=4)(inputs),
        ka.GatherExcite(extent=4)(inputs),
        ka.GatherExcite(extent=2, extra_params=True)(inputs),
        ka.GlobalContext(fusion=("scale", "add"))(inputs),
        ka.CoordinateAttention(reduction=24, divisor=8, use_bias=False, data_format="channels_first")(channels_first),
        ka.EfficientLocalAttention(shared=True, norm_groups=16, activation="linear", data_format="channels_first")(
            channels_first
        ),
        ka.GlobalContext(fusion="add", data_format="channels_first")(channels_first),
    ]
    model = keras.Model(inputs, branches)
    for layer in model.layers:
        if layer.weights:
            randomize_weights(layer, seed=len(layer.name))
    return model


def flex_op_model():
    """A CBAM model with one op TFLite has no builtin for (Flex: MatrixDeterminant)."""
    import tensorflow as tf

    class Determinant(keras.layers.Layer):
        """Scales the map by the determinant of its top-left 4x4 block: MatrixDeterminant has no builtin."""

        def call(self, x):
            block = tf.reshape(x[:, :4, :4, 0], (-1, 4, 4))
            return x * tf.reshape(tf.linalg.det(block), (-1, 1, 1, 1))

    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = Determinant(name="determinant_gate")(x)
    return keras.Model(inputs, ka.CBAM(reduction=2)(x))
