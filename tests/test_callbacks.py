"""Callbacks: the TensorBoard tags and values they write, resumable CSV logs, FlatnessMonitor."""

import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import callbacks, flatness, plotting, records
from tests.helpers.common import data
from tests.png_checks import png_size

D, C, N, BATCH = 6, 3, 48, 16


def model(method, learning_rate=0.1):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(C)]
    )
    wrapped = kg.GMixModel(inner, method=method, rho=0.07, seed=1)
    wrapped.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return wrapped


def read_events(folder):
    """{tag: [(step, value)]}: scalars as floats, histograms as (edges, counts)
    arrays, images as bytes."""
    found = {}
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                plugin = value.metadata.plugin_data.plugin_name
                found.setdefault(value.tag, []).append((event.step, plugin, tensor))
    return found


def test_step_values_logger_writes_lr_rho_and_histograms(tmp_path):
    x, y = data(N)
    schedule = keras.optimizers.schedules.PolynomialDecay(
        0.1, decay_steps=9, end_learning_rate=0.01
    )
    m = model("dgmix", learning_rate=schedule)
    logger = callbacks.StepValuesLogger(str(tmp_path), update_freq=2)
    m.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, shuffle=False, callbacks=[logger])  # 9 steps
    events = read_events(str(tmp_path))
    assert set(events) == {"learning_rate", "rho", "lambda", "sensitivity"}
    for tag in events:
        assert [step for step, _, _ in events[tag]] == [2, 4, 6, 8], tag
    # The rate after step t is the schedule's rate for the next step, t.
    rates = [float(t) for _, _, t in events["learning_rate"]]
    assert rates == pytest.approx([float(schedule(t)) for t in (2, 4, 6, 8)], rel=1e-6)
    assert [float(t) for _, _, t in events["rho"]] == pytest.approx([0.07] * 4)
    for tag in ("lambda", "sensitivity"):
        for _, plugin, histogram in events[tag]:
            assert plugin == "histograms"
            # [buckets, 3] of (left, right, count): the batch's values, no NaN padding.
            assert histogram[:, 2].sum() == pytest.approx(BATCH)
            assert np.isfinite(histogram).all()
    # lambda is one value per batch here: it lies in [0, 1].
    for _, _, histogram in events["lambda"]:
        assert histogram[:, 0].min() >= 0.0 and histogram[:, 1].max() <= 1.0


@pytest.mark.parametrize(
    "method, expected", [("erm", set()), ("mixup", {"lambda"}), ("sam", {"sensitivity"})]
)
def test_step_values_logger_skips_what_a_method_does_not_compute(tmp_path, method, expected):
    x, y = data(N)
    m = model(method)
    m.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[callbacks.StepValuesLogger(str(tmp_path), update_freq=1)],
    )
    assert set(read_events(str(tmp_path))) == {"learning_rate", "rho"} | expected


def test_epoch_timer_and_resumable_csv_logger(tmp_path):
    path = tmp_path / "history.csv"
    # CSVLogger adds val_ columns (NA) when fit has no validation data.
    path.write_text(
        "epoch,loss,seconds,val_loss,val_seconds\n0,1.0,2.0,NA,NA\n1,0.9,2.0,NA,NA\n"
        "2,0.8,2.0,NA,NA\n3,0."
    )
    x, y = data(N)
    m = model("erm")
    logger = callbacks.ResumableCSVLogger(str(path))
    m.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=4,
        initial_epoch=2,
        verbose=0,
        callbacks=[callbacks.EpochTimer(), logger],
    )
    rows = list(csv.DictReader(open(path)))
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert rows[1] == {
        "epoch": "1",
        "loss": "0.9",
        "seconds": "2.0",
        "val_loss": "NA",
        "val_seconds": "NA",
    }
    assert rows[2]["loss"] != "0.8" and float(rows[2]["seconds"]) > 0
    # A run that starts at epoch 0 starts a new file.
    m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callbacks.EpochTimer(), logger])
    assert [row["epoch"] for row in csv.DictReader(open(path))] == ["0"]


def test_resumable_csv_logger_keeps_the_columns_when_the_resumed_epoch_validates(tmp_path):
    # validation_freq=2: the first attempt's first epoch had no val_ logs, so
    # Keras wrote a val_ column for every key; the resumed attempt starts at
    # an epoch that validates, whose logs have only val_loss.
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,seconds,val_loss,val_seconds\n0,1.0,2.0,NA,NA\n")
    x, y = data(N)
    m = model("erm")
    m.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        initial_epoch=1,
        verbose=0,
        validation_data=(x, y),
        validation_freq=2,
        callbacks=[callbacks.EpochTimer(), callbacks.ResumableCSVLogger(str(path))],
    )
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "loss", "seconds", "val_loss", "val_seconds"]
    assert [len(row) for row in rows] == [5, 5, 5, 5]
    history = records.read_history(str(path))
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert np.isfinite(history[1]["val_loss"]) and np.isnan(history[2]["val_loss"])


def test_flatness_monitor_logs_tags_pngs_and_the_measured_values(tmp_path):
    x, y = data(N)
    held_out = data(N, seed=1)
    m = model("dgmix")
    settings = dict(eigenvalue_iters=4, sharpness_steps=2, landscape_points=5, rho=0.05, seed=3)
    monitor = callbacks.FlatnessMonitor(
        held_out,
        every=2,
        log_dir=str(tmp_path / "tb"),
        plot_dir=str(tmp_path / "png"),
        trace_samples=2,
        **settings,
    )
    m.fit(x, y, batch_size=BATCH, epochs=4, verbose=0, callbacks=[monitor])
    events = read_events(str(tmp_path / "tb"))
    assert set(events) == {
        "flatness/top_eigenvalue",
        "flatness/rho_sharpness",
        "flatness/hessian_trace",
        "flatness/loss",
        "flatness/landscape_1d",
    }
    for tag in events:
        assert [step for step, _, _ in events[tag]] == [1, 3], tag  # epochs 2 and 4, 0-based
    _, plugin, image = events["flatness/landscape_1d"][0]
    assert plugin == "images" and image[2].startswith(b"\x89PNG")
    # The image logged is the figure written: one panel at the shared dpi.
    panel = (plotting.PANEL[0] * plotting.DPI, plotting.PANEL[1] * plotting.DPI)
    assert png_size(image[2]) == panel
    assert png_size(str(tmp_path / "png" / "landscape_1d_epoch004.png")) == panel
    assert sorted(os.listdir(tmp_path / "png")) == [
        "flatness.csv",
        "landscape_1d_epoch002.png",
        "landscape_1d_epoch004.png",
    ]
    rows = list(csv.DictReader(open(tmp_path / "png" / "flatness.csv")))
    assert [row["epoch"] for row in rows] == ["2", "4"]

    # The last record is the measure of the final weights, as flatness.py computes it.
    loss = m.loss
    expected = flatness.hessian_top_eigenvalue(
        m, held_out, loss, iters=4, seed=3, batch_size=256
    ).value
    assert monitor.records[-1]["top_eigenvalue"] == pytest.approx(expected, rel=1e-5)
    sharp = flatness.rho_sharpness(m, held_out, loss, rho=0.05, steps=2, seed=3, batch_size=256)
    assert monitor.records[-1]["rho_sharpness"] == pytest.approx(sharp.value, rel=1e-5)
    assert monitor.records[-1]["loss"] == pytest.approx(sharp.loss, rel=1e-6)
    assert float(events["flatness/top_eigenvalue"][-1][2]) == pytest.approx(expected, rel=1e-5)


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="update_freq"):
        callbacks.StepValuesLogger("logs", update_freq=0)
    with pytest.raises(ValueError, match="every"):
        callbacks.FlatnessMonitor((np.zeros((1, D)), np.zeros(1)), every=0)


def test_tensorboard_writes_every_epoch_when_update_freq_does_not_divide_the_steps(tmp_path):
    """3 steps per epoch, update_freq=10: Keras' own callback records the epoch
    scalars only for epochs that end on a multiple of 10 (here: none)."""
    x, y = data(N)  # 48 examples, batch 16: 3 steps per epoch
    m = model("gmix")
    m.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=4,
        validation_data=(x, y),
        verbose=0,
        callbacks=[callbacks.ResumableTensorBoard(str(tmp_path), update_freq=10)],
    )
    train_events = read_events(str(tmp_path / "train"))
    validation_events = read_events(str(tmp_path / "validation"))
    for tag in ("epoch_loss", "epoch_perturbed_loss", "epoch_learning_rate"):
        assert [step for step, _, _ in train_events[tag]] == [0, 1, 2, 3], tag
    assert [step for step, _, _ in validation_events["epoch_loss"]] == [0, 1, 2, 3]
    # The values are the epoch's: the History of the same fit.
    history = m.history.history
    np.testing.assert_allclose(
        [float(v) for _, _, v in train_events["epoch_loss"]], history["loss"], rtol=1e-6
    )
    np.testing.assert_allclose(
        [float(v) for _, _, v in validation_events["epoch_loss"]], history["val_loss"], rtol=1e-6
    )
    # The batch scalars keep their cadence: steps 10 of the 12.
    assert [step for step, _, _ in train_events["batch_loss"]] == [10]


def test_a_damaged_history_csv_names_itself(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.5\ngarbage,0.4\n")
    with pytest.raises(ValueError, match=rf"{path} is unreadable.*row 3.*delete the run folder"):
        kg.records.read_history(str(path))
