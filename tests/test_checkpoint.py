"""checkpoint.py: save and restore, kills and full disks mid-write, damaged files named."""

import os

import keras
import numpy as np
import pytest

import keras_gmix as kg
from tests.helpers.common import (
    GUARDED,
    C,
    D,
    compiled,
    data,
    small_model,
    truncate,
)


def _trained(seed, steps):
    model = compiled("gmix", small_model(seed), **GUARDED)
    x, y = data(8 * steps, seed=seed)
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
    model = compiled("sam", small_model(0), **GUARDED)
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
    again = compiled("sam", small_model(5), **GUARDED)
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
        return compiled("sam", inner, **GUARDED)

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


def _saved_backup(tmp_path):
    backup = str(tmp_path / "backup")
    model = _trained(0, steps=1)
    kg.checkpoint.save(model, backup, epochs_done=1)
    return model, backup


@pytest.mark.parametrize("name", ["state.json", "epoch-000001.weights.h5", "epoch-000001.rng.npz"])
def test_a_damaged_checkpoint_file_names_itself_and_the_fix(tmp_path, name):
    model, backup = _saved_backup(tmp_path)
    truncate(os.path.join(backup, name))
    path = os.path.join(backup, name)
    with pytest.raises(
        ValueError, match=rf"{path} is unreadable .*delete the backup folder {backup} to start"
    ):
        kg.checkpoint.restore(model, backup)


# -- a full disk while a checkpoint is written ------------------------------------------


def test_a_full_disk_during_a_checkpoint_write_says_so_and_keeps_the_last_one(
    tmp_path, monkeypatch
):
    import errno

    from keras_gmix import checkpoint, records

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
