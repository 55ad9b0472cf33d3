"""One GMixModel training step per method, with the mixing coefficient and
the partner permutation injected: the same on every backend.

    KERAS_BACKEND=<backend> python tests/helpers/one_step.py OUT.npz

writes, for each method, the wrapped network's weights (BatchNorm's
moving statistics included) after one `train_on_batch`. tests/test_jax.py
runs it on TensorFlow and compares with the same step on JAX.
"""

import sys

import keras
import numpy as np

import keras_gmix as kg
from keras_gmix import mixing

N, D, C = 16, 6, 3
LAM = 0.65
METHODS = kg.METHODS


def batch():
    rng = np.random.default_rng(7)
    return rng.normal(size=(N, D)).astype("float32"), rng.integers(0, C, N)


def permutation():
    return np.random.default_rng(8).permutation(N).astype("int32")


def network():
    keras.utils.set_random_seed(3)
    inner = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(C),
        ]
    )
    rng = np.random.default_rng(9)
    inner.set_weights([rng.normal(size=w.shape).astype("float32") for w in inner.get_weights()])
    # Positive moving variance, as BatchNormalization keeps it.
    weights = inner.get_weights()
    weights[5] = np.abs(weights[5]) + 0.5
    inner.set_weights(weights)
    return inner


class InjectedMix(kg.GMixModel):
    """GMixModel whose every step mixes with the fixed LAM and permutation."""

    def mix_data(self, x, y, sample_weight, seed):
        lam = keras.ops.convert_to_tensor(LAM, "float32")
        x_mix, y_mix, label_lam = mixing.mix_batch(x, y, lam, permutation())
        return x_mix, y_mix, sample_weight, label_lam


def weights_after_one_step(method):
    model = InjectedMix(network(), method=method, rho=0.3, seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = batch()
    model.train_on_batch(x, y)
    return [np.asarray(w) for w in model.inner.get_weights()]


def all_methods():
    return {
        f"{method}/{i}": value
        for method in METHODS
        for i, value in enumerate(weights_after_one_step(method))
    }


if __name__ == "__main__":
    np.savez(sys.argv[1], **all_methods())
