"""Additive PyramidNet for CIFAR (Han, Kim and Kim 2017)."""

import math

import keras

from keras_gmix import checks
from keras_gmix.models.blocks import (
    ZeroPadChannels,
    check_common_args,
    check_depth,
    classifier_head,
    conv,
    norm,
    relu,
)


def _round_half_up(value):
    # As the authors' Torch code (math.floor(x + 0.5)); Python's round()
    # rounds half to even.
    return int(math.floor(value + 0.5))


def _shortcut(x, channels, strides, prefix):
    """Average-pool by the stride, then zero-pad the new channels."""
    if strides != 1:
        x = keras.layers.AveragePooling2D(
            pool_size=strides,
            strides=strides,
            padding="same",
            name=f"{prefix}_pool",
        )(x)
    if x.shape[-1] != channels:
        x = ZeroPadChannels(channels, name=f"{prefix}_pad")(x)
    return x


def _pyramid_block(x, planes, strides, bottleneck, batchnorm, weight_decay, prefix):
    """BN-conv-BN-ReLU-conv-BN (basic) or the 1x1-3x3-1x1 bottleneck."""
    y = norm(x, batchnorm, name=f"{prefix}_bn1")
    if bottleneck:
        y = conv(y, planes, 1, 1, weight_decay, name=f"{prefix}_conv1")
        y = norm(y, batchnorm, name=f"{prefix}_bn2")
        y = relu(y, name=f"{prefix}_relu1")
        y = conv(y, planes, 3, strides, weight_decay, name=f"{prefix}_conv2")
        y = norm(y, batchnorm, name=f"{prefix}_bn3")
        y = relu(y, name=f"{prefix}_relu2")
        out_channels = 4 * planes
        y = conv(y, out_channels, 1, 1, weight_decay, name=f"{prefix}_conv3")
        y = norm(y, batchnorm, name=f"{prefix}_bn4")
    else:
        y = conv(y, planes, 3, strides, weight_decay, name=f"{prefix}_conv1")
        y = norm(y, batchnorm, name=f"{prefix}_bn2")
        y = relu(y, name=f"{prefix}_relu1")
        out_channels = planes
        y = conv(y, out_channels, 3, 1, weight_decay, name=f"{prefix}_conv2")
        y = norm(y, batchnorm, name=f"{prefix}_bn3")
    x = _shortcut(x, out_channels, strides, prefix)
    return keras.layers.Add(name=f"{prefix}_add")([x, y])


def pyramidnet(
    depth=110,
    alpha=270,
    bottleneck=False,
    num_classes=10,
    input_shape=(32, 32, 3),
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """Additive PyramidNet: channels grow by alpha / N at every block.

    A 3x3 stem with 16 filters and BN, N blocks in three stages (stride 2 at
    the start of the second and third), block k having round(16 + k * alpha
    / N) channels (times 4 at the output of a bottleneck), residual branches
    without a final ReLU, zero-padded identity shortcuts (average pooling
    where the stride is 2), a final BN-ReLU, global average pooling and a
    dense classifier. Published sizes (10 classes): PyramidNet-110 alpha=48
    1.7M, alpha=270 28.3M (basic blocks); PyramidNet-164 alpha=48 1.7M,
    alpha=270 27.0M, PyramidNet-272 alpha=200 26.0M (bottleneck).

    Args:
        depth: int; 6n + 2 for basic blocks, 9n + 2 for bottleneck blocks.
            Defaults to 110.
        alpha: number, the total channel increase (widening factor).
            Defaults to 270.
        bottleneck: bool, use bottleneck blocks. Defaults to False.
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (32, 32, 3).
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on conv and dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str or None. Defaults to f"pyramidnet{depth}_{alpha}".

    Returns:
        A functional `keras.Model`.

    References:
        - Han, Kim, Kim, "Deep Pyramidal Residual Networks", CVPR 2017,
          https://arxiv.org/abs/1610.02915 (counts: Tables 4 and 5 and
          github.com/jhkim89/PyramidNet)
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    layers_per_block = 9 if bottleneck else 6
    blocks = "bottleneck blocks: 11, 272, ..." if bottleneck else "basic blocks: 8, 110, ..."
    depth = check_depth(depth, layers_per_block, 2, blocks)
    checks.check_number("alpha", alpha, low=0)
    n = (depth - 2) // layers_per_block
    add_rate = alpha / (3 * n)
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 16, 3, 1, weight_decay, name="stem_conv")
    x = norm(x, batchnorm, name="stem_bn")
    channels = 16.0
    for stage in range(3):
        for block in range(n):
            channels += add_rate
            strides = 2 if stage > 0 and block == 0 else 1
            x = _pyramid_block(
                x,
                _round_half_up(channels),
                strides,
                bottleneck,
                batchnorm,
                weight_decay,
                prefix=f"stage{stage + 1}_block{block + 1}",
            )
    x = norm(x, batchnorm, name="final_bn")
    x = relu(x, name="final_relu")
    outputs = classifier_head(x, num_classes, weight_decay, classifier_activation)
    name = name or f"pyramidnet{depth}_{alpha}"
    return keras.Model(inputs, outputs, name=name)
