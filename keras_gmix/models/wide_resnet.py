"""Wide Residual Networks WRN-d-k (Zagoruyko and Komodakis 2016)."""

import keras

from keras_gmix import checks
from keras_gmix.models.blocks import (
    check_common_args,
    check_depth,
    classifier_head,
    conv,
    norm,
    preact_block,
    relu,
)


def wide_resnet(
    depth=28,
    width=10,
    num_classes=10,
    input_shape=(32, 32, 3),
    dropout_rate=0.0,
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """WRN-depth-width: pre-activation ResNet with widened stages.

    A 3x3 stem with 16 filters, three stages of (depth - 4) / 6 blocks with
    16k, 32k, 64k filters (stride 2 from the second stage), 1x1 projections
    where the shape changes, a final BN-ReLU, global average pooling and a
    dense classifier. WRN-16-8 has 11.0M and WRN-28-10 36.5M parameters
    (the paper's Table 4).

    Args:
        depth: int, 6n + 4 (16, 22, 28, 40, ...). Defaults to 28.
        width: int, the widening factor k. Defaults to 10.
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (32, 32, 3).
        dropout_rate: float in [0, 1), dropout between the two convolutions
            of each block. Defaults to 0.0.
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on conv and dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str or None. Defaults to f"wrn{depth}_{width}".

    Returns:
        A functional `keras.Model`.

    References:
        - Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016,
          https://arxiv.org/abs/1605.07146
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    depth = check_depth(depth, 6, 4, "10, 16, 22, 28, ...")
    width = checks.check_number("width", width, integer=True, low=1)
    checks.check_number("dropout_rate", dropout_rate, low=0, high=1, high_inclusive=False)
    n = (depth - 4) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 16, 3, 1, weight_decay, name="stem_conv")
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            x = preact_block(
                x,
                filters,
                strides,
                batchnorm,
                weight_decay,
                prefix=f"stage{stage + 1}_block{block + 1}",
                dropout_rate=dropout_rate,
            )
    x = norm(x, batchnorm, name="final_bn")
    x = relu(x, name="final_relu")
    outputs = classifier_head(x, num_classes, weight_decay, classifier_activation)
    return keras.Model(inputs, outputs, name=name or f"wrn{depth}_{width}")
