"""GMixModel under keras.distribution.DataParallel on two host devices
against one device, on JAX.

    python tests/helpers/data_parallel.py METHOD [OPTION=VALUE ...]

(options of GMixModel, e.g. `perturb_every=2 reuse_scale=0.5`: numbers).

The two CPU devices must be made before JAX starts (XLA_FLAGS), hence a
process of its own. Prints one JSON line: the largest weight difference
between the two runs after a few steps, and whether the default
`sync_perturbation=False` was refused under the distribution.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gmix as kg  # noqa: E402

N, D, C = 32, 6, 3


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4 * N, D)).astype("float32"), rng.integers(0, C, 4 * N)


def network(weights=None):
    keras.utils.set_random_seed(1)
    inner = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(C),
        ]
    )
    if weights is not None:
        inner.set_weights(weights)
    return inner


def trained(inner, method, **kwargs):
    model = kg.GMixModel(inner, method=method, rho=0.1, seed=4, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = data()
    model.fit(x, y, batch_size=N, epochs=2, shuffle=False, verbose=0)
    return [np.array(w) for w in model.inner.get_weights()]


def main(method, options):
    start = [np.array(w) for w in network().get_weights()]
    one_device = trained(network(start), method, sync_perturbation=True, **options)
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    two_devices = trained(network(start), method, sync_perturbation=True, **options)
    try:
        trained(network(start), method, **options)
        refused = False
    except ValueError as error:
        refused = "sync_perturbation=True" in str(error)
    print(
        json.dumps(
            {
                "devices": len(devices),
                "max_difference": max(
                    float(np.max(np.abs(a - b))) for a, b in zip(one_device, two_devices)
                ),
                "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(start, one_device)),
                "default_refused": refused,
            }
        )
    )


if __name__ == "__main__":
    options = dict(option.split("=") for option in sys.argv[2:])
    main(sys.argv[1], {name: json.loads(value) for name, value in options.items()})
