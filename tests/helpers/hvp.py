"""The Hessian-vector product of a small network's mean loss, as
keras_gmix.flatness computes it, and an independent NumPy reference.

    KERAS_BACKEND=<backend> python tests/helpers/hvp.py OUT.npy

writes flatness's H v on that backend. tests/test_jax.py runs it on
TensorFlow and compares with the same product on JAX; tests/test_flatness.py
compares either backend's with `numpy_hvp` (float64 finite differences of
the loss, sharing no code with the package).

The network is Dense(tanh) -> BatchNormalization (inference mode: its moving
statistics) -> Dense, with softmax cross-entropy: curved in every weight,
and BatchNormalization's gamma and beta are among the differentiated ones.
"""

import sys

import keras
import numpy as np

from keras_gmix import flatness

N, D, H, C = 12, 4, 5, 3
EPSILON = 1e-3  # BatchNormalization's


def problem():
    """`(network, x, y, v)`: the network with fixed random weights, the data
    and the direction, one NumPy array per trainable variable."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, C, N)
    network = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, activation="tanh"),
            keras.layers.BatchNormalization(epsilon=EPSILON),
            keras.layers.Dense(C),
        ]
    )
    weights = [rng.normal(size=w.shape).astype("float32") for w in network.get_weights()]
    weights[5] = np.abs(weights[5]) + 0.5  # a positive moving variance
    network.set_weights(weights)
    v = [rng.normal(size=w.shape).astype("float32") for w in network.trainable_weights]
    return network, x, y, v


def flatness_hvp(batch_size=5):
    """H v as keras_gmix.flatness computes it (batches of 5: the last one short)."""
    network, x, y, v = problem()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    objective = flatness._Objective(network, (x, y), loss, batch_size)
    return np.asarray(objective.hvp(objective.w, flatness.flatten(v)), "float64")


def numpy_loss(theta, weights, x, y):
    """The mean cross-entropy in float64 at the flat trainable vector `theta`."""
    shapes = [(D, H), (H,), (H,), (H,), (H, C), (C,)]
    sizes = [int(np.prod(s)) for s in shapes]
    parts = np.split(theta, np.cumsum(sizes)[:-1])
    kernel1, bias1, gamma, beta, kernel2, bias2 = (p.reshape(s) for p, s in zip(parts, shapes))
    moving_mean, moving_variance = (np.asarray(w, "float64") for w in weights[4:6])
    hidden = np.tanh(x @ kernel1 + bias1)
    normal = (hidden - moving_mean) / np.sqrt(moving_variance + EPSILON) * gamma + beta
    logits = normal @ kernel2 + bias2
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y])


def numpy_hvp(step=1e-4):
    """H v by central differences of the loss in float64:
    (H v)_i = d^2 L(theta + a e_i + b v) / da db at 0, error O(step^2)."""
    network, x, y, v = problem()
    weights = network.get_weights()
    # Keras orders the variables: kernel, bias, gamma, beta, (moving), kernel, bias.
    trainable = [weights[i] for i in (0, 1, 2, 3, 6, 7)]
    theta = np.concatenate([np.ravel(w) for w in trainable]).astype("float64")
    direction = np.concatenate([np.ravel(t) for t in v]).astype("float64")
    x = x.astype("float64")

    def loss(a, i, b):
        point = theta + b * direction
        point[i] += a
        return numpy_loss(point, weights, x, y)

    h = step
    return np.array(
        [
            (loss(h, i, h) - loss(h, i, -h) - loss(-h, i, h) + loss(-h, i, -h)) / (4 * h * h)
            for i in range(theta.size)
        ]
    )


if __name__ == "__main__":
    np.save(sys.argv[1], flatness_hvp())
