"""A `fuse_batchnorm` model saved on one backend and loaded on the other.

    KERAS_BACKEND=<backend> python tests/helpers/saved_batchnorm.py FOLDER

On the backend it runs on, it loads FOLDER/<other>.keras if there is one and
writes what the loaded model predicts to FOLDER/loaded_on_<backend>.npz;
then it trains a model of its own (`trained`) and writes it to
FOLDER/<backend>.keras with its predictions in FOLDER/<backend>.npz.
tests/test_jax.py runs it on TensorFlow between two halves on JAX.
"""

import os
import sys

import keras
import numpy as np

from keras_gmix.backend import BACKENDS, NAME
from keras_gmix.layers import BatchNormalization, fuse_batchnorm


def batch():
    rng = np.random.default_rng(4)
    return rng.normal(size=(12, 6, 6, 3)).astype("float32") * 2.0 + 1.0, rng.integers(0, 3, 12)


def trained():
    """A stock model made ours by `fuse_batchnorm`, trained one epoch with fit."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=0.5)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = fuse_batchnorm(keras.Model(inputs, outputs))
    # Weights from NumPy: the backends' initializers draw different numbers.
    rng = np.random.default_rng(6)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    for layer in batchnorm_layers(model):
        layer.moving_variance.assign(np.abs(layer.moving_variance.numpy()) + 0.5)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(*batch(), batch_size=6, epochs=1, shuffle=False, verbose=0)
    return model


def predictions(model):
    """Inference (moving statistics) and training-mode (batch statistics) outputs."""
    x, _ = batch()
    return {
        "inference": model.predict(x, verbose=0),
        "training": keras.ops.convert_to_numpy(model(x, training=True)),
    }


def batchnorm_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


if __name__ == "__main__":
    folder = sys.argv[1]
    (other,) = [name for name in BACKENDS if name != NAME]
    if os.path.exists(os.path.join(folder, f"{other}.keras")):
        loaded = keras.saving.load_model(os.path.join(folder, f"{other}.keras"))
        assert [type(layer) for layer in batchnorm_layers(loaded)] == [BatchNormalization]
        np.savez(os.path.join(folder, f"loaded_on_{NAME}.npz"), **predictions(loaded))
    model = trained()
    model.save(os.path.join(folder, f"{NAME}.keras"))
    np.savez(os.path.join(folder, f"{NAME}.npz"), **predictions(model))
