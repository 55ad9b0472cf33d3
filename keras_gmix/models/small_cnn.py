"""A small CNN for digits and quick runs (under 100k parameters)."""

import keras

from keras_gmix import checks
from keras_gmix.models.blocks import check_common_args, classifier_head, conv, norm, relu


def small_cnn(
    num_classes=10,
    input_shape=(8, 8, 1),
    width=32,
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name="small_cnn",
):
    """Two stages of two conv-BN-ReLU layers, each stage then max-pooled.

    Filters `width` and `2 * width`; global average pooling and a dense
    classifier follow. With width 32: 66,410 parameters on 32x32x3 inputs
    and 65,834 on 8x8x1 digits (10 classes). Works on inputs down to 4x4.

    Args:
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (8, 8, 1), the digits.
        width: int, filters of the first stage. Defaults to 32.
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on conv and dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str. Defaults to "small_cnn".

    Returns:
        A functional `keras.Model`.
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    width = checks.check_number("width", width, integer=True, low=1)
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for stage, filters in enumerate((width, 2 * width)):
        for layer in range(2):
            prefix = f"stage{stage + 1}_layer{layer + 1}"
            x = conv(x, filters, 3, 1, weight_decay, name=f"{prefix}_conv")
            x = norm(x, batchnorm, name=f"{prefix}_bn")
            x = relu(x, name=f"{prefix}_relu")
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"stage{stage + 1}_pool")(x)
    outputs = classifier_head(x, num_classes, weight_decay, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
