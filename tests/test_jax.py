"""GMixModel on Keras' JAX backend (run with KERAS_BACKEND=jax; tests/conftest.py
collects this module on JAX only).

The step's arithmetic is the TensorFlow backend's, written once in
keras.ops; these tests check what is JAX's own against independent
references: one step against the same step on TensorFlow, the stateless
step against Keras' own fit, keras.distribution against one device, the
mixing stream across save and load.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_gmix as kg
from tests.helpers import hvp, one_step, saved_batchnorm
from tests.helpers.common import HELPERS, ROOT, compiled, data, dense_bn_model


def run_helper(script, *args, backend="jax"):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, os.path.join(HELPERS, script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_one_step_equals_the_same_step_on_tensorflow(tmp_path):
    """Every method, lambda and partner permutation injected: weights within
    1e-5 and BatchNorm's moving statistics within 1e-6 of TensorFlow's."""
    run_helper("one_step.py", str(tmp_path / "tf.npz"), backend="tensorflow")
    on_tensorflow = np.load(tmp_path / "tf.npz")
    on_jax = one_step.all_methods()
    start = one_step.network().get_weights()
    assert set(on_jax) == set(on_tensorflow.files)
    for key, value in on_jax.items():
        method, index = key.split("/")
        moving_statistic = int(index) in (4, 5)
        tolerance = 1e-6 if moving_statistic else 1e-5
        np.testing.assert_allclose(value, on_tensorflow[key], rtol=0, atol=tolerance, err_msg=key)
        # The step moved it (a real comparison, not of two untouched copies).
        assert np.max(np.abs(value - start[int(index)])) > 1e-4, key


@pytest.mark.parametrize(
    "method",
    [
        ["dgmix"],
        # A schedule: the kind of each step is chosen on the host.
        ["dgmix", "perturb_every=2", "reuse_scale=0.5"],
        pytest.param(["sam"], marks=pytest.mark.slow),
    ],
)
def test_data_parallel_on_two_devices_equals_one_device(method):
    result = json.loads(run_helper("data_parallel.py", *method).strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["moved"] > 1e-2
    assert result["max_difference"] < 1e-5
    # Per-replica perturbation has no meaning on one global batch: refused.
    assert result["default_refused"]


def test_erm_trains_exactly_as_keras_fit_with_sample_weights_and_a_regularizer():
    """GMixModel's stateless step against Keras' own JAX train_step."""

    def network():
        keras.utils.set_random_seed(2)
        return keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu", kernel_regularizer="l2"),
                keras.layers.BatchNormalization(),
                keras.layers.Dense(4),
            ]
        )

    x, y = data(n=48)
    weights = np.random.default_rng(3).uniform(0.2, 2.0, size=48).astype("float32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    plain = network()
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    plain.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=False, verbose=0)
    model = kg.GMixModel(network(), method="erm")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    model.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.inner.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_late_phase_before_its_start_is_mixup_step_for_step():
    """gmix with perturb_from beyond the run makes only cheap steps: Mixup's,
    on the same mixed batches (the mixing stream is the seed's)."""
    x, y = data(n=64)
    late = compiled("gmix", perturb_from=1000, seed=7)
    mixup = compiled("mixup", seed=7)
    history = late.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    mixup.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert history["full_step"] == [0.0]
    for a, b in zip(late.inner.get_weights(), mixup.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_every_second_step_is_full_with_perturb_every_2():
    x, y = data(n=64)
    history = (
        compiled("dgmix", perturb_every=2, reuse_scale=0.5)
        .fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        .history
    )
    assert history["full_step"] == [0.5]
    assert history["sharpness"][0] > 0  # averaged over the full steps only


# The schedules: a full step every second step with reuse; a random one in
# a late phase (cheap before step 3, then full with probability 1/2).
SCHEDULES = [
    {"perturb_every": 2, "reuse_scale": 0.5},
    {"perturb_probability": 0.5, "perturb_from": 3},
]


@pytest.mark.parametrize(
    "schedule",
    # The schedules compile two more steps each (26 s on 2 loaded cores): slow.
    [{}] + [pytest.param(schedule, marks=pytest.mark.slow) for schedule in SCHEDULES],
)
def test_save_and_load_continue_the_mixing_stream(tmp_path, schedule):
    """1 epoch, .keras file, load (safe mode), 1 more epoch == 2 epochs; with
    a schedule, the steps after loading are the full and cheap ones that the
    uninterrupted run made. (Without dropout: a .keras file keeps no layer's
    RNG state, on either backend; the run checkpoints of
    `keras_gmix.checkpoint` do.)"""
    x, y = data(n=64)
    whole = compiled("dgmix", **schedule)
    history = whole.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    first = compiled("dgmix", **schedule)
    first.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "model.keras")
    second = keras.saving.load_model(tmp_path / "model.keras")
    resumed = second.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert int(second.mix_step.value) == 8
    if schedule:
        assert resumed["full_step"] == history["full_step"][1:]
    for a, b in zip(second.inner.get_weights(), whole.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_jit_gradients_is_refused_with_what_to_do_on_jax():
    with pytest.raises(ValueError, match="on JAX"):
        kg.GMixModel(dense_bn_model(), method="gmix", jit_gradients=True)


@pytest.mark.parametrize(
    "policy", ["mixed_float16", pytest.param("mixed_bfloat16", marks=pytest.mark.slow)]
)
def test_mixed_precision_trains_like_float32(policy):
    """The loss scale reaches every differentiated loss (the ascent gradient
    too) and LossScaleOptimizer's stateless apply runs inside the step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = np.argmax(x[:, :3], axis=1)  # three balanced, linearly separable classes

    def accuracy(dtype_policy):
        keras.mixed_precision.set_global_policy(dtype_policy)
        try:
            keras.utils.set_random_seed(0)
            inner = keras.Sequential(
                [
                    keras.Input((8,)),
                    keras.layers.Dense(32, activation="relu"),
                    keras.layers.Dense(3, dtype="float32"),
                ]
            )
            optimizer = keras.optimizers.SGD(0.1)
            if dtype_policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model = kg.GMixModel(inner, method="dgmix", seed=1)
            model.compile(
                optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            history = model.fit(x, y, batch_size=32, epochs=6, verbose=0).history
            assert history["skipped_steps"][-1] == 0.0
            return model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
        finally:
            keras.mixed_precision.set_global_policy("float32")

    reference = accuracy("float32")
    assert reference > 0.7  # it learns (chance: 1/3)
    assert abs(accuracy(policy) - reference) < 0.05


@pytest.mark.slow
def test_flatness_hessian_vector_product_equals_tensorflows(tmp_path):
    """A JVP of jax.grad against TensorFlow's nested tapes: same network
    (tanh, BatchNormalization, cross-entropy), data and direction. (Slow: a
    TensorFlow process; test_flatness checks either backend's product against
    finite differences in the default run.)"""
    run_helper("hvp.py", str(tmp_path / "tf.npy"), backend="tensorflow")
    on_tensorflow = np.load(tmp_path / "tf.npy")
    assert np.abs(on_tensorflow).max() > 1.0
    np.testing.assert_allclose(hvp.flatness_hvp(), on_tensorflow, rtol=0, atol=1e-5)


def test_a_fuse_batchnorm_model_saved_on_either_backend_loads_on_the_other(tmp_path):
    """Same class name and config on both backends: JAX's file loads on
    TensorFlow and TensorFlow's on JAX, predicting what they predicted; and
    one epoch of fit from the same weights (stock computation on JAX, the
    fused kernel on TensorFlow) trains the same model."""
    folder = str(tmp_path)
    model = saved_batchnorm.trained()
    (layer,) = saved_batchnorm.batchnorm_layers(model)
    assert type(layer) is kg.layers.BatchNormalization
    model.save(os.path.join(folder, "jax.keras"))
    on_jax = saved_batchnorm.predictions(model)
    run_helper("saved_batchnorm.py", folder, backend="tensorflow")

    loaded_on_tensorflow = np.load(os.path.join(folder, "loaded_on_tensorflow.npz"))
    on_tensorflow = np.load(os.path.join(folder, "tensorflow.npz"))
    loaded = keras.saving.load_model(os.path.join(folder, "tensorflow.keras"))
    assert [type(layer) for layer in saved_batchnorm.batchnorm_layers(loaded)] == [
        kg.layers.BatchNormalization
    ]
    loaded_on_jax = saved_batchnorm.predictions(loaded)
    for key in ("inference", "training"):
        np.testing.assert_allclose(loaded_on_tensorflow[key], on_jax[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(loaded_on_jax[key], on_tensorflow[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(on_jax[key], on_tensorflow[key], atol=1e-4, err_msg=key)
    # Training moved the moving statistics (a real comparison of trained models).
    assert np.abs(on_jax["inference"] - on_jax["training"]).max() > 1e-2
