"""MobileNetV2 from `keras.applications`, with our batchnorm and decay."""

import keras

from keras_gmix.models.blocks import check_common_args, kernel_regularizer


def mobilenet_v2(
    num_classes=10,
    input_shape=(32, 32, 3),
    alpha=1.0,
    batchnorm=keras.layers.BatchNormalization,
    weight_decay=0.0,
    classifier_activation="softmax",
    name="mobilenetv2",
):
    """`keras.applications.MobileNetV2`, untrained, for any class count.

    Built with `weights=None`, so any input of at least 32x32 and any number
    of classes work. The application's BatchNormalization layers are
    replaced by `batchnorm` (same axis, momentum and epsilon), and with
    `weight_decay` an L2 penalty is added to the Conv2D and Dense kernels.
    Depthwise kernels get none, as in the TF-Slim reference, where
    `regularize_depthwise` is off by default. At 32x32 the network's five
    stride-2 stages leave a 1x1 map: it trains, but CIFAR accuracy is better
    at larger inputs (e.g. resize to 96 or 128).

    Args:
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C), H and W >= 32. Defaults to (32, 32, 3).
        alpha: float, the width multiplier of the application. Defaults to
            1.0 (3.5M parameters with 1000 classes).
        batchnorm: the normalization layer class. Defaults to
            `keras.layers.BatchNormalization`.
        weight_decay: float, L2 coefficient on Conv2D and Dense kernels.
            Defaults to 0.0.
        classifier_activation: activation of the output layer; None for
            logits. Defaults to "softmax".
        name: str. Defaults to "mobilenetv2".

    Returns:
        A functional `keras.Model`.

    References:
        - Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted
          Residuals and Linear Bottlenecks", CVPR 2018,
          https://arxiv.org/abs/1801.04381
    """
    num_classes, input_shape = check_common_args(num_classes, input_shape, weight_decay)
    if min(input_shape[:2]) < 32:
        raise ValueError(
            "MobileNetV2 needs inputs of at least 32x32. Received: "
            f"input_shape={input_shape}. Upsample smaller images (e.g. "
            "load_dataset('digits', image_size=32))."
        )
    base = keras.applications.MobileNetV2(
        input_shape=input_shape,
        alpha=alpha,
        include_top=True,
        weights=None,
        classes=num_classes,
        classifier_activation=classifier_activation,
        name=name,
    )
    replace_bn = batchnorm is not keras.layers.BatchNormalization

    def clone_layer(layer):
        config = layer.get_config()
        if replace_bn and isinstance(layer, keras.layers.BatchNormalization):
            return batchnorm(
                axis=config["axis"],
                momentum=config["momentum"],
                epsilon=config["epsilon"],
                name=config["name"],
            )
        if weight_decay and isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            config["kernel_regularizer"] = kernel_regularizer(weight_decay)
        if layer.name == "predictions":
            # float32 logits under mixed precision, as blocks.classifier_head.
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    return keras.models.clone_model(base, clone_function=clone_layer)
