"""labels.py: the label rule, called directly with values worked out by hand,
and the soft-label warning through fit."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import labels as labels_lib

NAMES = ["cls", "flag"]


def test_kinds_by_shape_and_width():
    assert labels_lib.label_kind((8,), 3) == "ids"
    assert labels_lib.label_kind((8, 1), 3) == "ids"
    assert labels_lib.label_kind((8, 3), 3) == "one_hot"
    assert labels_lib.label_kind((8,), 1) == "binary"
    assert labels_lib.label_kind((8, 1), 1) == "binary"


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
