"""What the training step guards itself (issue 17): labels and sample weights
from a pipeline, metrics on skipped steps, settings that cannot change behind
the compiled step, and the drawn seed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from tests.helpers.common import GUARDED, C, compiled, data, small_model, step_check_error


def batches(x, y, *extra, batch_size=16):
    return tf.data.Dataset.from_tensor_slices((x, y, *extra)).batch(batch_size)


def test_fractional_class_ids_in_a_pipeline_are_refused():
    x, y = data(32)
    y = y.astype("float32")
    y[3] = 1.7  # a cast would silently train on class 1
    with pytest.raises(step_check_error(), match="whole numbers"):
        compiled(inner=small_model(), **GUARDED).fit(batches(x, y), verbose=0)


def test_whole_float_class_ids_in_a_pipeline_train():
    x, y = data(32)
    history = (
        compiled(inner=small_model(), **GUARDED)
        .fit(batches(x, y.astype("float32")), verbose=0)
        .history
    )
    assert history["skipped_steps"] == [0.0]


# On JAX, Keras' data adapter turns every batch into JAX arrays, which have no
# strings: it fails there ("Invalid dtype: object") before any step runs.
@pytest.mark.tensorflow_only
def test_string_labels_in_a_pipeline_get_a_sentence():
    x, _ = data(32)
    with pytest.raises(TypeError, match="Map class names to integer ids"):
        compiled(inner=small_model(), **GUARDED).fit(
            batches(x, np.array(["cat", "dog"] * 16)), verbose=0
        )


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_bad_sample_weights_are_refused(bad):
    x, y = data(32)
    weights = np.ones(32, "float32")
    weights[4] = bad
    with pytest.raises(ValueError, match="Sample weights"):
        compiled(inner=small_model(), **GUARDED).fit(x, y, sample_weight=weights, verbose=0)
    with pytest.raises(step_check_error(), match="Sample weights"):
        compiled(inner=small_model(), **GUARDED).fit(batches(x, y, weights), verbose=0)


@pytest.mark.parametrize("method", ["mixup", "dgmix"])
def test_skipped_steps_leave_every_metric_untouched(method):
    """Four all-NaN batches after a good one: the epoch's loss and accuracy are
    the good batch's alone (today's code logged accuracy 1.0 and loss 0.0 for
    an epoch of NaN batches)."""
    x, y = data(80)
    model = compiled(method, small_model(), **GUARDED)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x_good, y_good = x[:16], y[:16]
    reference = compiled(method, small_model(), **GUARDED)
    reference.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    expected = reference.fit(batches(x_good, y_good), verbose=0).history
    x_bad = x.copy()
    x_bad[16:] = np.nan
    history = model.fit(batches(x_bad, y), verbose=0).history
    assert history["skipped_steps"] == [4.0]
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-6, err_msg=key)


def test_an_epoch_of_only_skipped_steps_logs_nan_not_a_perfect_score():
    x, y = data(64)
    x[:] = np.nan
    model = compiled(inner=small_model(), **GUARDED)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(batches(x, y), verbose=0).history
    assert history["skipped_steps"] == [4.0]
    # No step was kept: NaN, as Keras logs a diverged epoch (the empty
    # metrics would read loss 0.0, a perfect fit). The G-Mix statistics too.
    assert all(np.isnan(history[name][0]) for name in history if name != "skipped_steps")


@pytest.mark.parametrize("method", ["erm", "gmix"])
def test_terminate_on_nan_stops_a_diverged_fit_as_it_stops_keras(method):
    """Keras' TerminateOnNaN stops at the first batch whose logged loss is
    NaN; GMixModel skips that step and logs NaN because no step of the epoch
    was kept, so it stops at the same batch, with the weights before it."""
    x, y = data(64)
    x[:] = np.nan
    histories = []

    def linear():  # no ReLU, which would turn the NaN inputs into a finite loss
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(C)])

    for model in (linear(), compiled(inner=linear(), method=method, **GUARDED)):
        model.compile(
            optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        history = model.fit(
            batches(x, y), epochs=3, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]
        )
        histories.append(history)
    keras_history, gmix_history = histories
    assert len(keras_history.epoch) == len(gmix_history.epoch) == 1
    assert np.isnan(keras_history.history["loss"][0]) and np.isnan(gmix_history.history["loss"][0])
    assert gmix_history.history["skipped_steps"] == [1.0]  # stopped at its first batch


def test_a_loss_scale_overflow_alone_does_not_log_nan():
    """LossScaleOptimizer's overflow skips are its business, not a
    divergence: an epoch whose only steps overflowed still logs numbers."""
    x, y = data(16)
    x *= 100.0  # a loss of about 100, which overflows float32 at a scale of 2**127
    model = compiled(inner=small_model(), method="gmix", **GUARDED)
    model.compile(
        optimizer=keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**127
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(batches(x, y), verbose=0).history
    assert history["skipped_steps"] == [1.0]
    assert not np.isnan(history["loss"][0])


@pytest.mark.parametrize(
    "name,value",
    [("method", "erm"), ("rho", 0.5), ("alpha", 2.0), ("seed", 3), ("perturb_every", 2)],
)
def test_settings_are_read_only_after_construction(name, value):
    model = compiled(inner=small_model(), **GUARDED)
    with pytest.raises(AttributeError, match=f"`{name}`.*Build a new model"):
        setattr(model, name, value)


def test_a_drawn_seed_is_serialized_and_the_reloaded_model_mixes_the_same(tmp_path):
    model = kg.GMixModel(small_model(), method="mixup")  # seed=None: drawn
    assert isinstance(model.get_config()["seed"], int)
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x, y = data(16)
    model.train_on_batch(x, y)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    y_one_hot = keras.ops.one_hot(y, C)
    mixed = [m.mix_data(x, y_one_hot, None, m.mixing_seed(2)) for m in (model, loaded)]
    for a, b in zip(mixed[0][:2], mixed[1][:2]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
