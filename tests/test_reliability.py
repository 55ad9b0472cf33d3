"""Bad input gets a clear error before training; numerical faults skip steps, never write NaN."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import config as config_lib
from tests.conftest import copy_run
from tests.test_train import _Kill

D, C = 6, 3


def small_model(seed=0, head=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8, activation="relu"), head or keras.layers.Dense(C)]
    )


def compiled(inner=None, method="dgmix", loss=None, **kwargs):
    model = kg.GMixModel(inner or small_model(), method=method, seed=0, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
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
    model = compiled(
        loss="categorical_crossentropy" if labels.ndim == 2 and labels.shape[1] == 5 else None
    )
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
    inner = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 1)]
    )  # (batch, 4, 4, 3)
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
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, D), "float32"), np.zeros(0, "int64"))
    ).batch(4)
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
    x_mix, y_mix, _, _ = model.mix_data(
        x, tf.one_hot(y, C), None, model.mixing_seed(tf.constant(1, tf.int64))
    )
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
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)]
    )
    model = compiled(inner, method=method, max_consecutive_skips=5)
    before = weights_of(model)
    x, y = data(16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [2.0]
    assert_unchanged(model, before)
    assert int(model.consecutive_skips.numpy()) == 2


def test_training_stops_after_consecutive_skips():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)]
    )
    model = compiled(inner, method="gmix", max_consecutive_skips=3)
    before = weights_of(model)
    x, y = data(64)
    with pytest.raises(
        FloatingPointError, match="last 3 steps all had a non-finite loss or gradient"
    ):
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


# -- interruption: SIGKILL mid-epoch, then --resume -------------------------------------

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Augmented (pad-crop on 16x16 digits), shuffled, dgmix: every source of randomness.
RESUME_RUN = [
    "--epochs",
    "3",
    "--train-size",
    "192",
    "--batch-size",
    "32",
    "--image-size",
    "16",
    "--augment",
    "standard",
    "--method",
    "dgmix",
    "--seed",
    "3",
    "--deterministic",
    "--verbose",
    "0",
    "--tensorboard-update-freq",
    "1",
]


def _gmix_train(args, prefix=(), expect=0):
    completed = subprocess.run(
        [sys.executable, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT),
    )
    assert completed.returncode == expect, completed.stderr[-3000:]
    return completed


def _state_of(output):
    """Every variable of the saved GMixModel (weights, BN statistics, optimizer, counters)."""
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    values = [v.numpy() for v in model.variables] + [v.numpy() for v in model.optimizer.variables]
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in kg.records.read_history(os.path.join(output, "history.csv"))
    ]
    return values, history


@pytest.mark.slow  # three gmix-train processes, ~70 s; run by .ci/run
# With a schedule (SPEC.md section 4b) too: full steps come from the restored
# step counter, and v is restored with the weights. 6 steps per epoch, k = 4:
# the kill falls between full steps 4 and 8.
# The late phase: 18 steps, --perturb-from 0.5 is step 9, which the resumed
# run (from step 6, the start of epoch 1) crosses.
@pytest.mark.parametrize(
    "schedule",
    [[], ["--perturb-every", "4", "--reuse-scale", "0.3"], ["--perturb-from", "0.5"]],
    ids=["plain", "schedule", "late_phase"],
)
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights_bit_for_bit(tmp_path, schedule):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    _gmix_train([*RESUME_RUN, *schedule, "--output", reference], prefix=["-m", "keras_gmix.cli"])
    # Killed after batch 2 of epoch 1 (0-based): epoch 0's checkpoint exists.
    _gmix_train(
        [*RESUME_RUN, *schedule, "--output", killed],
        prefix=[os.path.join(HELPERS, "sigkill_mid_epoch.py"), "1", "2"],
        expect=-signal.SIGKILL,
    )
    assert kg.checkpoint.saved_epoch(os.path.join(killed, "backup")) == 1
    assert not os.path.exists(os.path.join(killed, "model.keras"))
    _gmix_train(["--resume", "--output", killed], prefix=["-m", "keras_gmix.cli"])

    (ref_values, ref_history), (values, history) = _state_of(reference), _state_of(killed)
    assert history == ref_history and [row["epoch"] for row in history] == [0, 1, 2]
    if "--perturb-from" in schedule:
        assert [row["full_step"] for row in history] == [0.0, 0.5, 1.0]
    assert len(values) == len(ref_values)
    for got, want in zip(values, ref_values):
        np.testing.assert_array_equal(got, want)
    assert not os.path.exists(os.path.join(killed, "backup"))


def _trained(seed, steps):
    model = compiled(small_model(seed), method="gmix")
    x, y = data(8 * steps, seed)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def test_checkpoint_round_trip_restores_weights_optimizer_and_counters(tmp_path):
    backup = str(tmp_path / "backup")
    model = _trained(0, steps=3)
    kg.checkpoint.save(model, backup, epochs_done=4)
    fresh = _trained(1, steps=1)  # other weights, other optimizer state
    assert kg.checkpoint.restore(fresh, backup) == 4 and kg.checkpoint.saved_epoch(backup) == 4
    for a, b in zip(
        fresh.variables + fresh.optimizer.variables, model.variables + model.optimizer.variables
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(fresh.mix_step.numpy()) == 3 and int(fresh.optimizer.iterations.numpy()) == 3
    assert sorted(os.listdir(backup)) == [
        "epoch-000004.rng.npz",
        "epoch-000004.weights.h5",
        "state.json",
    ]


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    backup = str(tmp_path / "backup")
    first = _trained(0, steps=2)
    kg.checkpoint.save(first, backup, epochs_done=1)
    expected = [v.numpy() for v in first.variables]
    second = _trained(1, steps=3)

    def die(src, dst):  # the process dies right before a rename
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(kg.checkpoint.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        kg.checkpoint.save(second, backup, epochs_done=2)
    monkeypatch.undo()
    # A half-written weights file may lie there: it is not what state.json names.
    assert any(name.startswith(".tmp-") for name in os.listdir(backup))
    restored = _trained(2, steps=1)
    assert kg.checkpoint.restore(restored, backup) == 1
    for variable, value in zip(restored.variables, expected):
        np.testing.assert_array_equal(variable.numpy(), value)
    kg.checkpoint.save(second, backup, epochs_done=2)  # the next save clears the leftovers
    assert sorted(os.listdir(backup)) == [
        "epoch-000002.rng.npz",
        "epoch-000002.weights.h5",
        "state.json",
    ]


def test_keep_previous_keeps_the_checkpoint_before_the_newest(tmp_path):
    backup = str(tmp_path / "backup")
    first, second, third = _trained(0, steps=1), _trained(1, steps=2), _trained(2, steps=3)
    kg.checkpoint.save(first, backup, epochs_done=1, keep_previous=True)
    assert kg.checkpoint.committed_epochs(backup) == [1, 0]
    kg.checkpoint.save(second, backup, epochs_done=2, keep_previous=True)
    kg.checkpoint.save(third, backup, epochs_done=3, keep_previous=True)
    assert kg.checkpoint.committed_epochs(backup) == [3, 2, 0]
    assert sorted(os.listdir(backup)) == [
        "epoch-000002.rng.npz",
        "epoch-000002.weights.h5",
        "epoch-000003.rng.npz",
        "epoch-000003.weights.h5",
        "state.json",
    ]
    restored = _trained(5, steps=1)
    assert kg.checkpoint.restore(restored, backup, epoch=2) == 2
    for a, b in zip(
        restored.variables + restored.optimizer.variables,
        second.variables + second.optimizer.variables,
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert kg.checkpoint.restore(restored, backup) == 3
    np.testing.assert_array_equal(restored.variables[0].numpy(), third.variables[0].numpy())
    # A worker that resumed from its older checkpoint commits that epoch's successor again.
    kg.checkpoint.save(second, backup, epochs_done=3, keep_previous=True)
    assert kg.checkpoint.committed_epochs(backup) == [3, 2, 0]
    # Without keep_previous only the newest stays.
    kg.checkpoint.save(third, backup, epochs_done=4)
    assert kg.checkpoint.committed_epochs(backup) == [4, 0]
    assert sorted(os.listdir(backup)) == [
        "epoch-000004.rng.npz",
        "epoch-000004.weights.h5",
        "state.json",
    ]


def test_restore_of_an_epoch_that_is_not_kept_is_refused(tmp_path):
    backup = str(tmp_path / "backup")
    model = _trained(0, steps=1)
    kg.checkpoint.save(model, backup, epochs_done=1)
    kg.checkpoint.save(model, backup, epochs_done=2)
    with pytest.raises(ValueError, match="no checkpoint of epoch 1"):
        kg.checkpoint.restore(model, backup, epoch=1)
    before = [v.numpy() for v in model.variables]
    assert kg.checkpoint.restore(_trained(1, steps=1), backup, epoch=0) == 0  # a fresh start
    assert kg.checkpoint.resume_epoch(backup) == 2  # one process: its newest
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_backup_callback_resumes_fit_at_the_saved_epoch(tmp_path):
    backup = str(tmp_path / "backup")
    model = compiled(small_model(0), method="sam")
    x, y = data(32)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=4,
            verbose=0,
            callbacks=[
                kg.checkpoint.BackupAndRestore(backup),
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda e, logs: e == 1 and (_ for _ in ()).throw(KeyboardInterrupt)
                ),
            ],
        )
    assert kg.checkpoint.saved_epoch(backup) == 2
    epochs = []
    again = compiled(small_model(5), method="sam")
    again.fit(
        x,
        y,
        batch_size=16,
        epochs=4,
        verbose=0,
        callbacks=[
            kg.checkpoint.BackupAndRestore(backup),
            keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs.append(e)),
        ],
    )
    assert epochs == [2, 3] and int(again.optimizer.iterations.numpy()) == 8
    assert not os.path.exists(backup)
    # A later fit of the same model, with a new backup folder, starts at epoch 0 again.
    epochs.clear()
    again.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[
            kg.checkpoint.BackupAndRestore(str(tmp_path / "other")),
            keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epochs.append(e)),
        ],
    )
    assert epochs == [0, 1]


def test_removing_a_backup_renames_it_away_first(tmp_path, monkeypatch):
    backup = str(tmp_path / "backup")
    kg.checkpoint.save(_trained(0, steps=1), backup, epochs_done=1)
    removed = []
    real_remove = os.remove

    def remove_and_check(path):  # the backup folder is gone before any file is
        assert not os.path.exists(backup)
        removed.append(os.path.basename(path))
        real_remove(path)

    monkeypatch.setattr(kg.checkpoint.os, "remove", remove_and_check)
    kg.checkpoint.remove(backup)
    assert sorted(removed) == ["epoch-000001.rng.npz", "epoch-000001.weights.h5", "state.json"]
    assert os.listdir(tmp_path) == []


def test_checkpoint_keeps_the_dropout_random_state(tmp_path):
    """Training on from a restored checkpoint draws the dropout masks the run would have drawn."""

    def with_dropout(seed):
        keras.utils.set_random_seed(seed)
        inner = keras.Sequential(
            [
                keras.Input((D,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(C),
            ]
        )
        return compiled(inner, method="sam")

    backup = str(tmp_path / "backup")
    x, y = data(32)
    model = with_dropout(0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    kg.checkpoint.save(model, backup, epochs_done=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    resumed = with_dropout(1)
    kg.checkpoint.restore(resumed, backup)
    assert len(kg.checkpoint.rng_variables(resumed)) == 1
    resumed.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(resumed.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


class _Payload:
    """Unpickling it would create the file `path`: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_npz_with_pickled_arrays_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "data.npz"
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(
        path,
        x_train=images,
        y_train=np.arange(4),
        x_test=images,
        y_test=np.arange(4),
        label_names=np.array([_Payload(str(marker))], dtype=object),
    )
    with pytest.raises(ValueError, match="object \\(pickled\\) arrays"):
        kg.data.load_dataset(str(path))
    assert not marker.exists()


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


@pytest.mark.parametrize(
    "values, match",
    [
        ({"adaptive": "no"}, "`adaptive` must be True or False. Received: adaptive='no'"),
        ({"deterministic": 1}, "`deterministic` must be True or False"),
        ({"epochs": "ten"}, "`epochs` must be an integer >= 1. Received: epochs='ten'"),
        ({"batch_size": 16.5}, "`batch_size` must be an integer >= 1"),
        ({"rho": float("inf")}, "`rho` must be a finite number >= 0"),
        ({"alpha": float("nan")}, "`alpha` must be a finite number > 0"),
        ({"seed": "abc"}, "`seed` must be an integer"),
        ({"train_fraction": 0.0}, r"`train_fraction` must be a finite number in \(0, 1\]"),
        ({"learning_rate": True}, "`learning_rate` must be a finite number > 0"),
        (
            {"step_milestones": [0.75, 0.5]},
            "`step_milestones` must be .*strictly increasing in \\(0, 1\\)",
        ),
        ({"step_milestones": [0.5, 1.0]}, "`step_milestones` must be"),
        ({"step_milestones": [0.5, 0.5]}, "`step_milestones` must be"),
        ({"step_milestones": "0.5"}, "`step_milestones` must be"),
    ],
)
def test_config_values_are_checked_for_type_and_range(values, match):
    from keras_gmix import train

    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values).validate()


def test_a_config_file_with_a_string_for_a_flag_is_refused(tmp_path, capsys):
    from keras_gmix import cli

    path = tmp_path / "recipe.yaml"
    path.write_text('adaptive: "no"\nepochs: 1\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--config", str(path), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "`adaptive` must be True or False" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_config_accepts_numpy_scalars_as_plain_numbers():
    from keras_gmix import train

    config = train.TrainConfig(
        rho=np.float32(0.5), epochs=np.int64(3), step_milestones=[np.float32(0.5)]
    )
    assert (config.rho, config.epochs, config.step_milestones) == (0.5, 3, (0.5,))
    assert type(config.rho) is float and type(config.epochs) is int
    json.dumps(config.to_dict())  # config.json stays writable


# -- run records: one process per run folder; a resume continues the same run ----------

TINY_RUN = dict(
    method="gmix",
    epochs=2,
    train_size=32,
    batch_size=16,
    verbose=0,
    tensorboard_update_freq=1,
    schedule="constant",  # its epochs may grow on resume
)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A gmix run of 2 epochs stopped after its first: config.json, history.csv, backup/."""
    from keras_gmix import train

    output = str(tmp_path_factory.mktemp("interrupted") / "run")
    with pytest.raises(KeyboardInterrupt):
        train.run(train.TrainConfig(output=output, **TINY_RUN), callbacks=[_Kill(after=0)])
    return output


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    return copy_run(interrupted_run, tmp_path)


def _resume(output, **changes):
    from keras_gmix import train

    return train.TrainConfig.from_dict(
        config_lib.resume_values({"output": output, "resume": True, **changes})
    )


HOLDER = (
    "import sys, time\n"
    "from keras_gmix import records\n"
    "with records.hold_run_folder(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _start_holder(folder):
    """A process that holds `folder` until it is killed; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, folder],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT),
    )
    assert holder.stdout.readline().strip() == "held", (
        "the holder process died before holding the folder"
    )
    return holder


def _kill(process):
    process.kill()  # SIGKILL: no Python cleanup, the kernel alone releases the lock
    process.wait(timeout=60)
    process.stdout.close()


def test_a_run_folder_held_by_another_process_is_refused_naming_it(run_copy, capsys):
    from keras_gmix import cli
    from keras_gmix import records
    from keras_gmix import train

    holder = _start_holder(run_copy)
    try:
        history = open(os.path.join(run_copy, "history.csv")).read()
        with pytest.raises(
            records.RunFolderInUseError,
            match=rf"{run_copy} is in use by process {holder.pid} on host",
        ):
            train.run(_resume(run_copy))
        # The same through gmix-train: a sentence, exit code 2, nothing written.
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(["--resume", "--output", run_copy])
        assert exit_info.value.code == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert open(os.path.join(run_copy, "history.csv")).read() == history
    finally:
        _kill(holder)


def test_a_killed_holder_releases_the_run_folder(tmp_path):
    from keras_gmix import records

    folder = str(tmp_path)
    holder = _start_holder(folder)
    with pytest.raises(records.RunFolderInUseError):
        with records.hold_run_folder(folder):
            pass
    _kill(holder)
    with records.hold_run_folder(folder):
        assert (
            open(os.path.join(folder, records.LOCK_FILE))
            .read()
            .startswith(f"process {os.getpid()} ")
        )


def test_resume_of_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    from keras_gmix import cli
    from keras_gmix import train

    missing = str(tmp_path / "typo")
    with pytest.raises(
        FileNotFoundError, match=rf"Cannot resume: {missing} does not exist.*drop --resume"
    ):
        train.run(train.TrainConfig(output=missing, resume=True, **TINY_RUN))
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(
            [
                "--resume",
                "--output",
                missing,
                "--epochs",
                "1",
                "--train-size",
                "32",
                "--verbose",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not os.path.exists(missing)


@pytest.mark.parametrize(
    "damage, match",
    [("delete", "config.json is missing"), ("truncate", "config.json is unreadable")],
)
def test_resume_without_a_readable_config_json_is_refused(run_copy, damage, match):
    from keras_gmix import train

    path = os.path.join(run_copy, "config.json")
    if damage == "delete":
        os.remove(path)
    else:
        text = open(path).read()
        open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(
        (FileNotFoundError, ValueError), match=rf"{match}.*settings are unknown.*delete {run_copy}"
    ):
        train.run(_resume(run_copy))
    assert train.checkpoint_lib.saved_epoch(os.path.join(run_copy, "backup")) == 1, (
        "the backup is untouched"
    )


def test_resume_with_other_run_settings_is_refused_and_epochs_may_grow(run_copy):
    from keras_gmix import train

    config_path = os.path.join(run_copy, "config.json")
    before = open(config_path).read()
    with pytest.raises(ValueError, match=r"method: 'gmix' -> 'erm'; rho: 0.05 -> 0.1\."):
        train.run(_resume(run_copy, method="erm", rho=0.1))
    with pytest.raises(ValueError, match=r"epochs: 2 -> 1 \(epochs may only grow\)"):
        train.run(_resume(run_copy, epochs=1))
    assert open(config_path).read() == before, "a refused resume leaves config.json as it was"

    results = train.run(_resume(run_copy, epochs=3, verbose=0))
    saved = json.load(open(config_path))
    assert (results["method"], results["epochs"], results["epochs_done"]) == ("gmix", 3, 3)
    assert (saved["method"], saved["epochs"], saved["resume"]) == ("gmix", 3, False)
    assert {k: v for k, v in saved.items() if k != "epochs"} == {
        k: v for k, v in json.loads(before).items() if k != "epochs"
    }, "only epochs is relabelled"


def test_run_defining_settings_are_every_field_but_the_resumable_ones():
    """A field added to TrainConfig defines the run unless it is listed as resumable."""
    import dataclasses

    from keras_gmix import train

    fields = [f.name for f in dataclasses.fields(train.TrainConfig)]
    assert set(config_lib.RESUMABLE_FIELDS) <= set(fields)
    asked = train.TrainConfig(augment="none")  # config.json holds the resolved augmentation
    for name in fields:
        saved = dict(asked.to_dict(), **{name: "another value"})
        if name == "epochs":
            continue  # compared by size: the test above
        expected = [] if name in config_lib.RESUMABLE_FIELDS else [name]
        assert [d.split(":")[0] for d in config_lib.resume_differences(saved, asked)] == expected, (
            name
        )
    # A config.json written before a field existed holds its default.
    saved = asked.to_dict()
    del saved["rho"]
    assert config_lib.resume_differences(saved, asked) == []


def test_a_finished_run_is_not_extended_silently(tmp_path):
    from keras_gmix import train

    output = str(tmp_path / "run")
    train.run(train.TrainConfig(output=output, **dict(TINY_RUN, epochs=1)))
    with pytest.raises(ValueError, match="finished its 1 epochs and kept no checkpoint"):
        train.run(_resume(output, epochs=2))
    assert train.run(_resume(output))["epochs_done"] == 1  # the same settings: read back


class _DiesMidWrite:
    """A file that takes half of what is written to it, then the process "dies"."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise KeyboardInterrupt("killed while writing")


def test_a_kill_while_config_json_is_written_leaves_the_old_one(run_copy, monkeypatch):
    import builtins

    from keras_gmix import train

    config_path = os.path.join(run_copy, "config.json")
    before = open(config_path).read()
    real_open = builtins.open

    def dying_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        if "w" in mode and os.fspath(file).endswith("config.json"):
            return _DiesMidWrite(opened)
        return opened

    monkeypatch.setattr(builtins, "open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        train.run(_resume(run_copy, epochs=3))  # more epochs: config.json is rewritten
    monkeypatch.undo()
    assert open(config_path).read() == before
    assert train.run(_resume(run_copy))["epochs_done"] == 2  # and the run resumes from it


# -- each file read back names itself and the fix when it is damaged --------------------


def _truncate(path):
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def _saved_backup(tmp_path):
    backup = str(tmp_path / "backup")
    model = _trained(0, steps=1)
    kg.checkpoint.save(model, backup, epochs_done=1)
    return model, backup


@pytest.mark.parametrize("name", ["state.json", "epoch-000001.weights.h5", "epoch-000001.rng.npz"])
def test_a_damaged_checkpoint_file_names_itself_and_the_fix(tmp_path, name):
    model, backup = _saved_backup(tmp_path)
    _truncate(os.path.join(backup, name))
    path = os.path.join(backup, name)
    with pytest.raises(
        ValueError, match=rf"{path} is unreadable .*delete the backup folder {backup} to start"
    ):
        kg.checkpoint.restore(model, backup)


def test_a_damaged_model_keras_names_itself_in_gmix_flatness(tmp_path):
    from keras_gmix import flatness_report

    path = str(tmp_path / "model.keras")
    compiled(method="erm").save(path)
    _truncate(path)
    with pytest.raises(
        ValueError, match=rf"{path} is unreadable as a Keras model.*restore the file"
    ):
        flatness_report.load_model(path)


def test_a_damaged_config_json_beside_a_model_names_itself(tmp_path):
    from keras_gmix import flatness_report

    (tmp_path / "config.json").write_text('{"dataset": "dig')
    with pytest.raises(ValueError, match=r"config.json is unreadable \(truncated\?"):
        flatness_report.run_files(str(tmp_path / "model.keras"))


def test_a_damaged_results_json_names_itself_in_gmix_compare(tmp_path):
    from keras_gmix import compare

    run = tmp_path / "erm-seed0"
    run.mkdir()
    (run / "results.json").write_text('{"method": "erm", "test_acc')
    with pytest.raises(
        ValueError, match=rf"{run / 'results.json'} is unreadable.*out of --collect"
    ):
        compare.find_results([str(tmp_path)])


def test_a_damaged_history_csv_names_itself(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.5\ngarbage,0.4\n")
    with pytest.raises(ValueError, match=rf"{path} is unreadable.*row 3.*delete the run folder"):
        kg.records.read_history(str(path))


@pytest.mark.slow  # four gmix-train processes
def test_two_resumes_of_one_killed_run_one_is_refused(tmp_path):
    """The issue's case: two --resume of one killed run at once wrote every epoch twice."""
    output = str(tmp_path / "run")
    flags = [
        "--epochs",
        "3",
        "--train-size",
        "64",
        "--batch-size",
        "32",
        "--method",
        "dgmix",
        "--verbose",
        "0",
    ]
    _gmix_train(
        [*flags, "--output", output],
        prefix=[os.path.join(HELPERS, "sigkill_mid_epoch.py"), "1", "0"],
        expect=-signal.SIGKILL,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    first = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HELPERS, "pause_mid_epoch.py"),
            "1",
            "0",
            "--resume",
            "--output",
            output,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert first.stdout.readline().strip() == "paused", (
            "the first resume died before it trained"
        )
        second = subprocess.run(
            [sys.executable, "-m", "keras_gmix.cli", "--resume", "--output", output],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env=env,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{output} is in use by process {first.pid} on host" in second.stderr
    finally:
        _kill(first)
    _gmix_train(["--resume", "--output", output], prefix=["-m", "keras_gmix.cli"])
    history = kg.records.read_history(os.path.join(output, "history.csv"))
    assert [row["epoch"] for row in history] == [0, 1, 2]
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["epochs_done"] == 3
    assert results["seconds"] == pytest.approx(sum(row["seconds"] for row in history), abs=0.01)


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


# -- a full disk while a checkpoint is written ------------------------------------------


def test_a_full_disk_during_a_checkpoint_write_says_so_and_keeps_the_last_one(
    tmp_path, monkeypatch
):
    import errno

    from keras_gmix import checkpoint
    from keras_gmix import records

    model, backup = _saved_backup(tmp_path)
    before = sorted(os.listdir(backup))
    committed = [v.numpy().copy() for v in model.weights]

    def full(backup_dir, name, content):
        # A part of the temporary file reaches the disk, then the disk is full.
        with open(os.path.join(backup_dir, ".tmp-" + name), "wb") as f:
            f.write(content[: len(content) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    x, y = data(8, seed=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # the weights move on
    with pytest.raises(
        records.RecordWriteError,
        match=rf"checkpoint of epoch 2 into {backup}: the disk is full \(No space left on "
        r"device\)\. The last checkpoint \(epoch 1\) is intact: make room, then continue",
    ):
        checkpoint.save(model, backup, epochs_done=2)
    monkeypatch.undo()
    assert sorted(os.listdir(backup)) == before, "no temporary file is left behind"
    fresh = _trained(0, steps=1)
    assert checkpoint.restore(fresh, backup) == 1
    for variable, value in zip(fresh.weights, committed):
        np.testing.assert_array_equal(variable.numpy(), value)


DISK_LIMIT = (
    "import resource, runpy, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write then fails with EFBIG\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "runpy.run_module('keras_gmix.cli', run_name='__main__')\n"
)


@pytest.mark.slow  # two gmix-train processes, ~40 s
def test_a_full_disk_ends_gmix_train_with_a_sentence_and_the_run_resumes(tmp_path):
    """A real gmix-train whose files may not grow past 200 kB (RLIMIT_FSIZE):
    config.json, history.csv and TensorBoard fit, the checkpoint does not."""
    output = str(tmp_path / "run")
    args = ["--epochs", "2", "--train-size", "64", "--verbose", "0", "--output", output]
    limited = _gmix_train(args, prefix=["-c", DISK_LIMIT, "200000"], expect=2)
    assert "Traceback" not in limited.stderr
    assert "Cannot write the checkpoint of epoch 1" in limited.stderr
    assert "the disk is full (File too large)" in limited.stderr
    assert "No epoch was saved yet: make room, then continue the run with --resume" in (
        limited.stderr
    )
    assert os.listdir(os.path.join(output, "backup")) == []
    _gmix_train(["--resume", "--output", output], prefix=["-m", "keras_gmix.cli"])
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["epochs_done"] == 2
