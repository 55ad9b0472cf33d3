"""labels.py: the label rule, called directly with values worked out by hand,
and the soft-label warning through fit."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import labels as labels_lib
from keras_gmix import mixing

NAMES = ["cls", "flag"]


def test_kinds_by_shape_and_width():
    assert labels_lib.label_kind((8,), 3) == "ids"
    assert labels_lib.label_kind((8, 1), 3) == "ids"
    assert labels_lib.label_kind((8, 3), 3) == "one_hot"
    assert labels_lib.label_kind((8,), 1) == "binary"
    assert labels_lib.label_kind((8, 1), 1) == "binary"
    # One unit: the loss decides between a probability and a real target.
    assert labels_lib.label_kind((8,), 1, "binary_crossentropy") == "binary"
    assert labels_lib.label_kind((8,), 1, lambda t, p: (t - p) ** 2) == "binary"
    assert labels_lib.label_kind((8,), 1, "mse") == "values"
    assert labels_lib.label_kind((8, 1), 1, keras.losses.Huber()) == "values"
    assert labels_lib.label_kind((8, 1), 1, ["mae"]) == "values"
    assert labels_lib.label_kind((8,), 3, "mse") == "ids"  # mse on one-hot rows


def test_prepare_labels_of_two_outputs_as_a_dict():
    y = {"cls": np.array([2, 0]), "flag": np.array([1.0, 0.0], "float32")}
    loss = {"cls": "sparse_categorical_crossentropy", "flag": "binary_crossentropy"}
    prepared = labels_lib.prepare_labels(y, (3, 1), loss, NAMES)
    cls, flag = prepared.one_hot
    np.testing.assert_array_equal(cls.numpy(), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(flag.numpy(), [[1], [0]])
    assert prepared.kinds == ["ids", "binary"]
    assert not bool(labels_lib.any_soft(prepared))
    # The metrics see class ids again, of the mixed rows' dominant class,
    # and binary labels rounded, in the user's dict.
    mixed = [tf.constant([[0.1, 0.3, 0.6], [0.7, 0.3, 0.0]]), tf.constant([[0.8], [0.4]])]
    shown = labels_lib.metric_labels_like(y, prepared, mixed, True, NAMES)
    np.testing.assert_array_equal(shown["cls"].numpy(), [2, 0])
    np.testing.assert_array_equal(shown["flag"].numpy(), [1.0, 0.0])


def test_a_sparse_loss_with_one_hot_rows_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="sparse.*categorical_crossentropy"):
        labels_lib.prepare_labels(
            np.eye(3, dtype="float32"), (3,), "sparse_categorical_crossentropy", ["output_0"]
        )


def test_keras_own_loss_sees_class_ids_as_one_hot_rows_only_for_a_loss_on_rows():
    y = {"cls": np.array([2, 0]), "flag": np.array([1.0, 0.0], "float32")}
    loss = {"cls": "categorical_crossentropy", "flag": "binary_crossentropy"}
    given = labels_lib.labels_for_compiled_loss(y, (3, 1), loss, NAMES)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(given["cls"]), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(given["flag"], [1.0, 0.0])
    loss["cls"] = "sparse_categorical_crossentropy"
    given = labels_lib.labels_for_compiled_loss(y, (3, 1), loss, NAMES)
    np.testing.assert_array_equal(given["cls"], [2, 0])
    y["cls"] = np.eye(3, dtype="float32")[[2, 0]]
    with pytest.raises(ValueError, match="output 'cls' is sparse.*categorical_crossentropy"):
        labels_lib.labels_for_compiled_loss(y, (3, 1), loss, NAMES)


def test_labels_of_two_outputs_must_be_one_per_output():
    with pytest.raises(ValueError, match="one label array per output"):
        labels_lib.labels_per_output(np.zeros(4), (3, 1), NAMES)


def soft_label_warnings(loss, labels, width):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(width)])
    model = kg.GMixModel(net, method="gmix")
    model.compile(optimizer="sgd", loss=loss)
    x = np.random.default_rng(0).normal(size=(len(labels), 4)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, labels, batch_size=8, verbose=0)
        model.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(8), verbose=0)
    return [w for w in caught if "mixed twice" in str(w.message)]


def test_regression_targets_are_not_soft_labels():
    targets = np.random.default_rng(1).uniform(0.1, 0.9, (16, 3)).astype("float32")
    assert soft_label_warnings("mse", targets, 3) == []
    # The same values as class probabilities under a cross-entropy do warn.
    rows = targets / targets.sum(axis=1, keepdims=True)
    assert len(soft_label_warnings("categorical_crossentropy", rows, 3)) == 1


def linear_regression(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])


def regression_data(n=8):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype("float32")
    return x, (5.0 + 3.0 * rng.normal(size=(n,))).astype("float32")  # far outside [0, 1]


def test_a_one_unit_regression_output_trains_like_keras_with_erm():
    x, y = regression_data()
    plain, wrapped = linear_regression(), kg.GMixModel(linear_regression(), method="erm")
    for model in (plain, wrapped):
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    logs = [
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
        for m in (plain, wrapped)
    ]
    assert logs[1]["loss"] == pytest.approx(logs[0]["loss"], rel=1e-6)
    assert logs[1]["mae"] == pytest.approx(logs[0]["mae"], rel=1e-6)
    for a, b in zip(plain.get_weights(), wrapped.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-6)


def test_a_one_unit_regression_output_is_mixed_as_a_real_target():
    """Mixup on regression targets, against NumPy: the step trains on the
    mixed targets, and the metric sees them mixed (not rounded, not
    refused as binary labels outside [0, 1])."""
    x, y = regression_data()
    model = kg.GMixModel(linear_regression(), method="mixup", alpha=1.0, seed=5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    kernel, bias = (v.numpy().astype(np.float64) for v in model.inner.trainable_variables)
    lam, perm = kg.sample_mix(8, 1.0, seed=mixing.split_seed(model.mixing_seed(1), 2)[0])
    lam, perm = float(lam), np.asarray(perm)
    x_mix = lam * x + (1 - lam) * x[perm]
    y_mix = (lam * y + (1 - lam) * y[perm])[:, None]
    residual = x_mix @ kernel + bias - y_mix  # (8, 1)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
    assert history["loss"][0] == pytest.approx(np.mean(residual**2), rel=1e-5)
    assert history["mae"][0] == pytest.approx(np.mean(np.abs(residual)), rel=1e-5)
    new_kernel, new_bias = (v.numpy() for v in model.inner.trainable_variables)
    np.testing.assert_allclose(new_kernel, kernel - 0.1 * 2 / 8 * x_mix.T @ residual, rtol=1e-5)
    np.testing.assert_allclose(new_bias, bias - 0.1 * 2 * residual.mean(0), rtol=1e-5)


def test_one_unit_labels_outside_0_1_under_a_cross_entropy_are_refused_naming_both_readings():
    x, y = regression_data()
    model = kg.GMixModel(linear_regression(), method="mixup")
    model.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="positive class.*regression loss"):
        model.fit(x, y, verbose=0)
