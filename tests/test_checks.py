"""checks.py: bad input gets a clear error before training; every numeric argument is checked."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from tests.helpers.common import (
    GUARDED,
    C,
    D,
    assert_unchanged,
    compiled,
    data,
    small_model,
    weights_of,
)

# -- bad input: a clear error, before any weight changes ---------------------------------


@pytest.mark.parametrize(
    "labels,error,match",
    [
        (np.array(["cat", "dog"] * 16), TypeError, "numbers"),
        (np.zeros((32, 2, 2), "int64"), ValueError, r"shape \(n,\) or \(n, 1\)"),
        (np.full(32, 3), ValueError, r"\[0, 2\].*3 outputs"),
        (np.full(32, -1), ValueError, r"\[0, 2\]"),
        (np.eye(5, dtype="float32")[np.arange(32) % 5], ValueError, "5 columns.*3 classes"),
    ],
)
def test_bad_labels(labels, error, match):
    x, _ = data()
    model = compiled(
        inner=small_model(),
        **GUARDED,
        loss="categorical_crossentropy" if labels.ndim == 2 and labels.shape[1] == 5 else None,
    )
    before = weights_of(model)
    with pytest.raises(error, match=match):
        model.fit(x, labels, verbose=0)
    assert_unchanged(model, before)


def test_out_of_range_ids_in_a_dataset_stop_at_the_first_batch():
    x, _ = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, np.full(32, 7))).batch(8)
    model = compiled(inner=small_model(), **GUARDED)
    before = weights_of(model)
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must be < 3"):
        model.fit(dataset, verbose=0)
    assert_unchanged(model, before)


def test_model_output_must_be_class_scores():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 1)]
    )  # (batch, 4, 4, 3)
    model = compiled(inner=inner, **GUARDED)
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        model.fit(np.zeros((8, 4, 4, 1), "float32"), np.zeros(8, "int64"), verbose=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_images_with_nan_or_inf(bad):
    x, y = data()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf.*1 examples"):
        compiled(inner=small_model(), **GUARDED).fit(x, y, verbose=0)


def test_empty_data():
    model = compiled(inner=small_model(), **GUARDED)
    with pytest.raises(ValueError, match="empty"):
        model.fit(np.zeros((0, D), "float32"), np.zeros(0, "int64"), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, D), "float32"), np.zeros(0, "int64"))
    ).batch(4)
    with pytest.raises(ValueError, match="empty"):
        model.fit(empty, verbose=0)


@pytest.mark.parametrize("method", kg.METHODS)
def test_batch_of_one_mixes_with_itself(method):
    x, y = data(1)
    model = compiled(method, small_model(), **GUARDED)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    if method in ("bgmix", "dgmix"):
        assert logs["sensitive_fraction"] == 1.0  # ceil(0.5 * 1) = 1 example is sharp
    # Mixing one example with itself leaves it as it is.
    x_mix, y_mix, _, _ = model.mix_data(
        x, tf.one_hot(y, C), None, model.mixing_seed(tf.constant(1, tf.int64))
    )
    np.testing.assert_allclose(x_mix, x, rtol=1e-6)
    np.testing.assert_allclose(y_mix, tf.one_hot(y, C), rtol=1e-6)


def test_cutmix_on_non_images():
    x, y = data()
    with pytest.raises(ValueError, match="cutmix.*rank 4"):
        compiled(inner=small_model(), mix="cutmix", **GUARDED).fit(x, y, verbose=0)


# -- values: every numeric argument is checked, in the API and in config files ---------


def test_check_number_accepts_numpy_scalars_and_returns_python_numbers():
    from keras_gmix.checks import check_number

    assert (
        check_number("rho", np.float32(0.5), low=0) == 0.5
        and type(check_number("rho", np.float32(0.5))) is float
    )
    assert (
        check_number("seed", np.int64(3), integer=True) == 3
        and type(check_number("seed", np.int64(3), integer=True)) is int
    )
    assert check_number("rho", np.array(0.25)) == 0.25  # a 0-d array
    assert check_number("alpha", 1, low=0, low_inclusive=False) == 1.0


@pytest.mark.parametrize(
    "value, kwargs, allowed",
    [
        (np.inf, dict(low=0), "a finite number >= 0"),
        (np.nan, dict(low=0, low_inclusive=False), "a finite number > 0"),
        (True, dict(), "a finite number"),  # a bool is not a number here
        ("0.05", dict(), "a finite number"),
        (1.5, dict(low=0, high=1), r"a finite number in \[0, 1\]"),
        (0.0, dict(low=0, high=1, low_inclusive=False), r"a finite number in \(0, 1\]"),
        (2.0, dict(integer=True), "an integer"),
        (0, dict(low=1, integer=True), "an integer >= 1"),
    ],
)
def test_check_number_refusals_name_the_argument_and_the_allowed_values(value, kwargs, allowed):
    from keras_gmix.checks import check_number

    with pytest.raises(ValueError, match=rf"Argument `x` must be {allowed}\. Received: x="):
        check_number("x", value, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=np.inf), r"`rho` must be a finite number >= 0.*Received: rho=inf"),
        (dict(alpha=np.nan), r"`alpha` must be a finite number > 0.*Received: alpha=nan"),
        (dict(sensitive_fraction=np.nan), "`sensitive_fraction` must be a finite number in"),
        (dict(eta=-0.1), "`eta` must be a finite number >= 0"),
        (dict(rho=True), "`rho` must be a finite number"),
        (dict(seed="abc"), "`seed` must be an integer"),
        (dict(max_consecutive_skips=2.0), "`max_consecutive_skips` must be an integer >= 1"),
        (dict(adaptive="no"), "`adaptive` must be True or False"),
    ],
)
def test_gmix_model_refuses_bad_numbers_up_front(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.GMixModel(small_model(), **kwargs)


def test_gmix_model_accepts_numpy_scalars_and_saves_them_as_numbers(tmp_path):
    model = kg.GMixModel(
        small_model(),
        rho=np.float32(0.5),
        alpha=np.float64(0.4),
        sensitive_fraction=np.float32(0.25),
        eta=np.float32(0.5),
        seed=np.int64(3),
        max_consecutive_skips=np.int32(5),
    )
    config = model.get_config()
    assert (config["rho"], config["alpha"], config["sensitive_fraction"], config["seed"]) == (
        0.5,
        0.4,
        0.25,
        3,
    )
    json.dumps(
        {k: v for k, v in config.items() if k != "inner"}
    )  # plain numbers: no float32 in a .keras file
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert keras.saving.load_model(path).rho == 0.5


def test_update_gradients_checks_its_numbers():
    inner = small_model()
    x, y = data(8)
    y = np.eye(C, dtype="float32")[y]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    with pytest.raises(ValueError, match="`rho` must be a finite number >= 0"):
        kg.update_gradients(inner, x, y, loss=loss, method="gmix", rho=np.inf)
    numpy_grads, _ = kg.update_gradients(
        inner,
        x,
        y,
        loss=loss,
        method="bgmix",
        rho=np.float32(0.5),
        sensitive_fraction=np.float64(0.5),
    )
    python_grads, _ = kg.update_gradients(
        inner, x, y, loss=loss, method="bgmix", rho=0.5, sensitive_fraction=0.5
    )
    for a, b in zip(numpy_grads, python_grads):
        np.testing.assert_array_equal(a, b)


def test_sample_mix_checks_its_numbers():
    with pytest.raises(ValueError, match="`alpha` must be a finite number > 0.*alpha=nan"):
        kg.sample_mix(8, np.nan, seed=0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        kg.sample_mix("8", 1.0, seed=0)
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        kg.sample_mix(8, 1.0, seed="abc")
    lam, perm = kg.sample_mix(np.int64(8), np.float32(0.5), seed=np.int64(4))
    lam_py, perm_py = kg.sample_mix(8, 0.5, seed=4)
    assert float(lam) == float(lam_py) and perm.numpy().tolist() == perm_py.numpy().tolist()


def test_flatness_and_callback_arguments_use_the_same_number_check():
    model = small_model()
    x, y = data(8)
    with pytest.raises(ValueError, match="`rho` must be a finite number >= 0. Received: rho=inf"):
        kg.flatness.rho_sharpness(
            model, (x, y), keras.losses.SparseCategoricalCrossentropy(from_logits=True), rho=np.inf
        )
    with pytest.raises(
        ValueError, match="`update_freq` must be an integer >= 1. Received: update_freq=True"
    ):
        kg.callbacks.StepValuesLogger("logs", update_freq=True)
    assert kg.callbacks.StepValuesLogger("logs", update_freq=np.int64(5)).update_freq == 5
