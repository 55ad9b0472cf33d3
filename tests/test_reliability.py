"""Bad input gets a clear error before training; numerical faults skip steps, never write NaN."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg

D, C = 6, 3


def small_model(seed=0, head=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(8, activation="relu"), head or keras.layers.Dense(C)])


def compiled(inner=None, method="dgmix", loss=None, **kwargs):
    model = kg.GMixModel(inner or small_model(), method=method, seed=0, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype("float32"), rng.integers(0, C, n)


def weights_of(model):
    return [v.numpy().copy() for v in model.inner.weights]


def assert_unchanged(model, before):
    for variable, value in zip(model.inner.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


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
    model = compiled(loss="categorical_crossentropy" if labels.ndim == 2 and labels.shape[1] == 5 else None)
    before = weights_of(model)
    with pytest.raises(error, match=match):
        model.fit(x, labels, verbose=0)
    assert_unchanged(model, before)


def test_out_of_range_ids_in_a_dataset_stop_at_the_first_batch():
    x, _ = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, np.full(32, 7))).batch(8)
    model = compiled()
    before = weights_of(model)
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must be < 3"):
        model.fit(dataset, verbose=0)
    assert_unchanged(model, before)


def test_model_output_must_be_class_scores():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 1)])  # (batch, 4, 4, 3)
    model = compiled(inner)
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        model.fit(np.zeros((8, 4, 4, 1), "float32"), np.zeros(8, "int64"), verbose=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_images_with_nan_or_inf(bad):
    x, y = data()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf.*1 examples"):
        compiled().fit(x, y, verbose=0)


def test_empty_data():
    model = compiled()
    with pytest.raises(ValueError, match="empty"):
        model.fit(np.zeros((0, D), "float32"), np.zeros(0, "int64"), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices((np.zeros((0, D), "float32"), np.zeros(0, "int64"))).batch(4)
    with pytest.raises(ValueError, match="empty"):
        model.fit(empty, verbose=0)


@pytest.mark.parametrize("method", kg.METHODS)
def test_batch_of_one_mixes_with_itself(method):
    x, y = data(1)
    model = compiled(method=method)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    if method in ("bgmix", "dgmix"):
        assert logs["sensitive_fraction"] == 1.0  # ceil(0.5 * 1) = 1 example is sharp
    # Mixing one example with itself leaves it as it is.
    x_mix, y_mix, _, _ = model.mix_data(x, tf.one_hot(y, C), None, model.mixing_seed(tf.constant(1, tf.int64)))
    np.testing.assert_allclose(x_mix, x, rtol=1e-6)
    np.testing.assert_allclose(y_mix, tf.one_hot(y, C), rtol=1e-6)


def test_cutmix_on_non_images():
    x, y = data()
    with pytest.raises(ValueError, match="cutmix.*rank 4"):
        compiled(mix="cutmix").fit(x, y, verbose=0)


# -- numerical faults: skip, count, stop -------------------------------------------------


@pytest.mark.parametrize("method", ["erm", "gmix", "dgmix"])
def test_nan_in_a_batch_skips_the_step(method):
    x, y = data(16)
    x[5] = np.nan
    model = compiled(method=method)
    before = weights_of(model)
    optimizer_state = [v.numpy().copy() for v in model.optimizer.variables]
    # Arrays are refused up front; a data set reaches the step.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(dataset, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    assert_unchanged(model, before)
    model.optimizer.build(model.inner.trainable_variables)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        np.testing.assert_array_equal(variable.numpy(), value)
    clean_x, clean_y = data(16, seed=1)
    model.fit(clean_x, clean_y, batch_size=16, verbose=0)  # and it goes on training
    assert int(model.consecutive_skips.numpy()) == 0
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))
    assert any(not np.array_equal(a, b) for a, b in zip(weights_of(model), before))


class NaNGradient(keras.layers.Layer):
    """Identity forward; its backward pass returns NaN (a fault in a gradient only)."""

    def call(self, x):
        @tf.custom_gradient
        def identity(x):
            return tf.identity(x), lambda upstream: upstream * np.nan

        return identity(x)


@pytest.mark.parametrize("method", ["mixup", "sam", "bgmix"])
def test_nan_gradient_skips_the_step(method):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)])
    model = compiled(inner, method=method, max_consecutive_skips=5)
    before = weights_of(model)
    x, y = data(16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [2.0]
    assert_unchanged(model, before)
    assert int(model.consecutive_skips.numpy()) == 2


def test_training_stops_after_consecutive_skips():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)])
    model = compiled(inner, method="gmix", max_consecutive_skips=3)
    before = weights_of(model)
    x, y = data(64)
    with pytest.raises(FloatingPointError, match="last 3 steps all had a non-finite loss or gradient"):
        model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    assert_unchanged(model, before)
    assert int(model.consecutive_skips.numpy()) == 3


def test_max_consecutive_skips_is_checked():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        kg.GMixModel(small_model(), max_consecutive_skips=0)


def test_multiworker_without_tf_config(monkeypatch):
    from keras_gmix import train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        train.TrainConfig(distribute="multiworker").validate()
