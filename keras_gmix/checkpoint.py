"""Training checkpoints that a kill at any instant leaves usable.

Keras' `BackupAndRestore` overwrites `latest.weights.h5` in place and writes
`training_metadata.json` after it, non-atomically: a SIGKILL during the
weights write leaves a torn file, and one between the two writes leaves the
new weights beside the old epoch number, so the resumed run trains that
epoch twice and its weights differ from an uninterrupted run's.

Here every file is written under a temporary name, flushed to disk and
renamed (atomic on POSIX and Windows), and each epoch's weights get their
own file name. The small state file `state.json`, replaced last, is the
commit point: it always names a complete weights file of the epoch it
states, whatever instant the process died at.
"""

import contextlib
import io
import json
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf

from keras_gmix import backend, compat, distribute, records

STATE_FILE = "state.json"
_WEIGHTS_PATTERN = "epoch-{:06d}.weights.h5"
_RNG_PATTERN = "epoch-{:06d}.rng.npz"


def rng_variables(model):
    """The random-number states of `model`'s layers (Dropout's `SeedGenerator`s).

    `save_weights` leaves them out, and a resumed run would then draw the
    dropout masks of a fresh start instead of where the run was.
    """
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def _fix(backup_dir):
    # What to do about a damaged backup: the run's record outside it
    # (config.json, history.csv) is kept, only the epochs since start are lost.
    return (
        f"delete the backup folder {backup_dir} to start the run over from epoch 0 "
        "(with --resume), or restore the file from a copy"
    )


def read_state(backup_dir):
    """The committed state {"epoch": epochs done, "weights": ..., "rng": file
    names, "run": what the run is}, or None (no backup begun).

    A backup begins with a state of epoch 0 (`begin`), written before any
    checkpoint file, so checkpoint files without a state.json mean that it
    was deleted, not that the first commit was cut short.
    """
    path = os.path.join(backup_dir, STATE_FILE)
    if not os.path.exists(path):
        if os.path.isdir(backup_dir) and any(
            name.startswith("epoch-") for name in os.listdir(backup_dir)
        ):
            raise ValueError(
                f"{path} is missing, but {backup_dir} holds checkpoint files: state.json "
                f"names the complete checkpoint, and without it none can be trusted: "
                f"{_fix(backup_dir)}."
            )
        return None
    state = records.read_json(path, _fix(backup_dir))
    if not isinstance(state.get("epoch"), int):
        raise ValueError(f"{path} is unreadable (it names no epoch): {_fix(backup_dir)}.")
    if state["epoch"] == 0:  # begun, nothing committed yet
        return state
    if not all(isinstance(state.get(k), str) for k in ("weights", "rng")):
        raise ValueError(f"{path} is unreadable (it names no files): {_fix(backup_dir)}.")
    for key in ("weights", "rng"):
        if not os.path.exists(os.path.join(backup_dir, state[key])):
            raise OSError(
                f"{path} names {state[key]}, which is missing: the backup "
                "folder was changed by hand. Delete the folder to start over."
            )
    return state


def begin(backup_dir, run=None):
    """Starts a backup in `backup_dir` (unless one is there): a state of
    epoch 0, carrying `run`, a JSON-able description of the run (checked by
    the caller on resume, `saved_run`)."""
    if read_state(backup_dir) is not None:
        return
    os.makedirs(backup_dir, exist_ok=True)
    state = {"epoch": 0, "weights": None, "rng": None, "previous": None, "run": run}
    records.atomic_write_text(os.path.join(backup_dir, STATE_FILE), json.dumps(state))


def saved_run(backup_dir):
    """The `run` the backup in `backup_dir` was written with (None without one)."""
    state = read_state(backup_dir)
    return None if state is None else state.get("run")


def remove(backup_dir):
    """Deletes a backup folder as one step: renamed away first, so a kill mid-way never leaves
    a `state.json` that names deleted files."""
    if not os.path.isdir(backup_dir):
        return
    parent, name = os.path.split(os.path.abspath(backup_dir))
    doomed = os.path.join(parent, f"{records.TEMP_PREFIX}{name}-{os.getpid()}")
    os.replace(backup_dir, doomed)
    records.fsync_directory(parent)
    for entry in os.listdir(doomed):
        os.remove(os.path.join(doomed, entry))
    os.rmdir(doomed)


def saved_epoch(backup_dir):
    """Epochs finished according to the backup in `backup_dir` (0 if there is none)."""
    state = read_state(backup_dir)
    return 0 if state is None else int(state["epoch"])


def _checkpoints(state):
    """The checkpoints a state names, newest first: {"epoch", "weights", "rng"} each."""
    if state is None or state["epoch"] == 0:
        return []
    newest = {key: state[key] for key in ("epoch", "weights", "rng")}
    return [newest] + ([state["previous"]] if state.get("previous") else [])


def committed_epochs(backup_dir):
    """The epochs `backup_dir` can restore, newest first (0, a fresh start, always can)."""
    return [int(c["epoch"]) for c in _checkpoints(read_state(backup_dir))] + [0]


def resume_epoch(backup_dir, strategy=None):
    """The epoch a run resumes from: its newest checkpoint's, or on several
    workers the oldest of their newest ones.

    Each worker of a multi-worker run commits its own checkpoint at the end of
    an epoch, so a job killed between two workers' commits leaves them one
    epoch apart; resuming each from its own newest would train them from
    different weights and epochs. So workers agree on the oldest, and a worker
    that is ahead restores the checkpoint before its newest, which
    `BackupAndRestore` keeps on several workers.
    """
    newest = saved_epoch(backup_dir)
    strategy = strategy or tf.distribute.get_strategy()
    if not distribute.is_multi_worker(strategy):
        return newest
    epoch = distribute.min_over_workers(newest, strategy)
    available = committed_epochs(backup_dir)
    if epoch not in available:
        raise ValueError(
            f"The workers' checkpoints are more than one epoch apart: this worker's "
            f"{backup_dir} holds epochs {available[:-1]}, another "
            f"worker's newest is epoch {epoch}. Delete every worker's backup folder "
            "to start over."
        )
    return epoch


def _write_bytes(backup_dir, name, content):
    """Writes `content` as `backup_dir/name`: a temporary file, flushed, renamed."""
    tmp = os.path.join(backup_dir, records.TEMP_PREFIX + name)
    with open(tmp, "wb") as f:
        f.write(content)
    records.replace_durably(tmp, os.path.join(backup_dir, name))


def _rng_bytes(model):
    buffer = io.BytesIO()
    np.savez(buffer, *[v.numpy() for v in rng_variables(model)])
    return buffer.getvalue()


def save(model, backup_dir, epochs_done, keep_previous=False, run=None):
    """Commits `model`'s weights and optimizer state as `epochs_done` finished epochs.

    `keep_previous` keeps the checkpoint committed before as well, the one
    a worker that is ahead of the others resumes from (see `resume_epoch`).
    `run` (JSON-able) is saved with it, as `begin` does.

    Raises:
        records.RecordWriteError: a file could not be written (a full disk,
            a read-only folder); the committed checkpoint is left as it was,
            and the message says so.
    """
    # Both files are built in memory first: HDF5 writing straight to a full
    # disk ends the process with a segmentation fault instead of an error.
    weights, rng = compat.weights_h5_bytes(model), _rng_bytes(model)
    try:
        _commit(backup_dir, epochs_done, keep_previous, weights, rng, run)
    except OSError as error:
        for other in os.listdir(backup_dir) if os.path.isdir(backup_dir) else ():
            if other.startswith(records.TEMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(backup_dir, other))
        kept = None
        with contextlib.suppress(OSError, ValueError):
            kept = saved_epoch(backup_dir)
        intact = (
            f"The last checkpoint (epoch {kept}) is intact" if kept else "No epoch was saved yet"
        )
        raise records.RecordWriteError(
            error.errno,
            f"Cannot write the checkpoint of epoch {epochs_done} into {backup_dir}: "
            f"{records.write_failure(error)}. {intact}: make room, then continue the "
            "run with --resume.",
        ) from error


def _commit(backup_dir, epochs_done, keep_previous, weights, rng, run):
    if not os.path.exists(os.path.join(backup_dir, STATE_FILE)):
        # Before any checkpoint file (see `read_state`).
        begin(backup_dir, run)
    # Read only when kept: a single process never depends on the old state.
    older = _checkpoints(read_state(backup_dir)) if keep_previous else []
    name = _WEIGHTS_PATTERN.format(epochs_done)
    _write_bytes(backup_dir, name, weights)
    rng_name = _RNG_PATTERN.format(epochs_done)
    _write_bytes(backup_dir, rng_name, rng)
    newest = {"epoch": int(epochs_done), "weights": name, "rng": rng_name}
    previous = [c for c in older if c["epoch"] < epochs_done]
    state = dict(newest, previous=previous[0] if previous else None, run=run)
    records.atomic_write_text(os.path.join(backup_dir, STATE_FILE), json.dumps(state))
    # Only now are the older checkpoints no longer needed.
    kept = {STATE_FILE} | {c[key] for c in _checkpoints(state) for key in ("weights", "rng")}
    for other in os.listdir(backup_dir):
        if other not in kept and (
            other.startswith("epoch-") or other.startswith(records.TEMP_PREFIX)
        ):
            os.remove(os.path.join(backup_dir, other))


def restore(model, backup_dir, epoch=None):
    """Loads the committed checkpoint of `epoch` (default: the newest) into
    `model`; returns its epoch (0: nothing saved, `model` is left as it is)."""
    checkpoints = _checkpoints(read_state(backup_dir))
    if epoch is None:
        epoch = checkpoints[0]["epoch"] if checkpoints else 0
    if epoch == 0:
        return 0
    state = next((c for c in checkpoints if c["epoch"] == epoch), None)
    if state is None:
        raise ValueError(
            f"{backup_dir} holds no checkpoint of epoch {epoch}; it holds epochs "
            f"{[c['epoch'] for c in checkpoints]}."
        )
    if model.optimizer is not None and not model.optimizer.built:
        # The optimizer's variables must exist before its state is loaded.
        model.optimizer.build(model.trainable_variables)
    weights_path = os.path.join(backup_dir, state["weights"])
    rng_path = os.path.join(backup_dir, state["rng"])
    try:
        model.load_weights(weights_path)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{weights_path} is unreadable ({error}): {_fix(backup_dir)}.") from error
    try:
        with np.load(rng_path, allow_pickle=False) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{rng_path} is unreadable ({error}): {_fix(backup_dir)}.") from error
    variables = rng_variables(model)
    if len(values) != len(variables):
        raise ValueError(
            f"The checkpoint in {backup_dir} holds {len(values)} random-number "
            f"states, the model has {len(variables)}: it is another model's."
        )
    for variable, value in zip(variables, values):
        variable.assign(value)
    return int(state["epoch"])


class BackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore` with atomic checkpoints.

    At the end of every epoch it commits the model's weights, its
    non-trainable state (BatchNorm statistics, `GMixModel`'s mixing
    counter, Dropout's random-number state) and the optimizer's state; at
    the start of `fit` it restores the last committed checkpoint and makes
    `fit` continue with the next epoch. A process killed at any instant,
    mid-epoch or mid-write, resumes from the last finished epoch. Combined
    with a training pipeline keyed by the epoch
    (`keras_gmix.data.make_pipeline(..., start_epoch=...)`) and op
    determinism, the resumed run ends with the same weights, bit for bit, as
    an uninterrupted one.

    On several workers (`MultiWorkerMirroredStrategy`) each worker needs a
    folder of its own; it keeps its two newest checkpoints, and the workers
    resume together from the oldest of their newest ones (`resume_epoch`),
    also when the job was killed between two workers' commits.

    Args:
        backup_dir: str, a folder used by this callback alone.
        delete_checkpoint: bool, remove the folder when `fit` ends normally.
            Pass False when more must be saved after `fit` (results, the
            model), and call `remove(backup_dir)` once it is. Defaults to
            True.
        run: a JSON-able description of the run (e.g. its settings), saved
            in state.json, for `saved_run` to check on resume that the
            backup is this run's. Defaults to `None`.
    """

    def __init__(self, backup_dir, delete_checkpoint=True, run=None):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"`backup_dir` must be a folder path. Received: {backup_dir!r}")
        self.backup_dir = backup_dir
        self.delete_checkpoint = delete_checkpoint
        self.run = run
        self._keep_previous = False

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore needs a built model: build it (call it on a "
                "batch, or `model.build(shape)`) before `fit`."
            )
        strategy = backend.model_strategy(self.model)
        self._keep_previous = distribute.is_multi_worker(strategy)
        epoch = restore(self.model, self.backup_dir, resume_epoch(self.backup_dir, strategy))
        begin(self.backup_dir, self.run)
        # The attribute Keras' own BackupAndRestore sets: fit starts here.
        # None leaves fit's own `initial_epoch` in force.
        compat.set_initial_epoch(self.model, epoch or None)

    def on_epoch_end(self, epoch, logs=None):
        save(
            self.model, self.backup_dir, epoch + 1, keep_previous=self._keep_previous, run=self.run
        )

    def on_train_end(self, logs=None):
        # Keras reads it but never clears it: a later fit would start there.
        compat.set_initial_epoch(self.model, None)
        if self.delete_checkpoint:
            remove(self.backup_dir)
