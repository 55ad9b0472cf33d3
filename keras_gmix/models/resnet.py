"""CIFAR ResNets (He et al. 2016) and PreAct ResNet-18 (He et al. 2016b)."""

import keras

from keras_gmix.models.blocks import (
    ZeroPadChannels,
    check_common_args,
    check_depth,
    classifier_head,
    conv,
    norm,
    preact_block,
    relu,
)

SHORTCUTS = ("A", "B")


def _basic_block(x, filters, strides, shortcut, batchnorm, weight_decay, prefix):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU (post-activation)."""
    in_channels = x.shape[-1]
    y = conv(x, filters, 3, strides, weight_decay, name=f"{prefix}_conv1")
    y = norm(y, batchnorm, name=f"{prefix}_bn1")
    y = relu(y, name=f"{prefix}_relu1")
    y = conv(y, filters, 3, 1, weight_decay, name=f"{prefix}_conv2")
    y = norm(y, batchnorm, name=f"{prefix}_bn2")
    if strides != 1 or in_channels != filters:
        if shortcut == "A":
            # Parameter-free: subsample by the stride, pad the new channels
            # with zeros. MaxPooling with a 1x1 window just subsamples.
            if strides != 1:
                x = keras.layers.MaxPooling2D(
                    pool_size=1, strides=strides, name=f"{prefix}_subsample"
                )(x)
            x = ZeroPadChannels(filters, name=f"{prefix}_pad")(x)
        else:
            x = conv(x, filters, 1, strides, weight_decay, f"{prefix}_proj")
            x = norm(x, batchnorm, name=f"{prefix}_proj_bn")
    y = keras.layers.Add(name=f"{prefix}_add")([x, y])
    return relu(y, name=f"{prefix}_out")


def cifar_resnet(
    depth=20,
    num_classes=10,
    input_shape=(32, 32, 3),
    shortcut="A",
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name=None,
):
    """The CIFAR ResNet of He et al. 2016 (section 4.2): 6n + 2 layers.

    A 3x3 convolution with 16 filters, three stages of n basic blocks with
    16, 32 and 64 filters (the last two start with stride 2), global average
    pooling and a dense classifier. The paper uses the parameter-free
    shortcut "A" on CIFAR; with it ResNet-20/32/56 have 0.27M/0.46M/0.85M
    parameters, as in its Table 6.

    Args:
        depth: int, 6n + 2 (20, 32, 44, 56, 110, ...). Defaults to 20.
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (32, 32, 3).
        shortcut: "A" (subsample and zero-pad channels) or "B" (1x1
            projection with BatchNormalization) where the shape changes.
            Defaults to "A".
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on conv and dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str or None, the model's name. Defaults to f"resnet{depth}".

    Returns:
        A functional `keras.Model`.

    References:
        - He, Zhang, Ren, Sun, "Deep Residual Learning for Image
          Recognition", CVPR 2016, https://arxiv.org/abs/1512.03385
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    depth = check_depth(depth, 6, 2, "20, 32, 56, ...")
    if shortcut not in SHORTCUTS:
        raise ValueError(
            f"`shortcut` must be one of {list(SHORTCUTS)}. Received: shortcut={shortcut!r}"
        )
    n = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 16, 3, 1, weight_decay, name="stem_conv")
    x = norm(x, batchnorm, name="stem_bn")
    x = relu(x, name="stem_relu")
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(
                x,
                filters,
                strides,
                shortcut,
                batchnorm,
                weight_decay,
                prefix=f"stage{stage + 1}_block{block + 1}",
            )
    outputs = classifier_head(x, num_classes, weight_decay, classifier_activation)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")


def preact_resnet18(
    num_classes=10,
    input_shape=(32, 32, 3),
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name="preact_resnet18",
):
    """PreAct ResNet-18 for 32x32 images, as used by Mixup and G-Mix.

    A 3x3 stem with 64 filters (no stride, no pooling), four stages of two
    pre-activation basic blocks with 64, 128, 256, 512 filters (stride 2 from
    the second stage), 1x1 projection shortcuts where the shape changes, a
    final BN-ReLU, global average pooling and a dense classifier. About
    11.17M parameters for 10 classes. The final BN-ReLU follows He et al.
    2016b; the widely copied kuangliu/pytorch-cifar version omits it (1,024
    fewer parameters).

    Args:
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (32, 32, 3).
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on conv and dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str, the model's name. Defaults to "preact_resnet18".

    Returns:
        A functional `keras.Model`.

    References:
        - He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual
          Networks", ECCV 2016, https://arxiv.org/abs/1603.05027
        - Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk
          Minimization", ICLR 2018, https://arxiv.org/abs/1710.09412
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 64, 3, 1, weight_decay, name="stem_conv")
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = preact_block(
                x,
                filters,
                strides,
                batchnorm,
                weight_decay,
                prefix=f"stage{stage + 1}_block{block + 1}",
            )
    x = norm(x, batchnorm, name="final_bn")
    x = relu(x, name="final_relu")
    outputs = classifier_head(x, num_classes, weight_decay, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
