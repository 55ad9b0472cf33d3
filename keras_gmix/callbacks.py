"""Callbacks: TensorBoard step values, flatness monitoring, resumable logs.

- `StepValuesLogger` writes, every N optimizer steps, the learning rate, rho
  and histograms of the mixing coefficients lambda and of the per-example
  sharpness-sensitivity s_i of the last step (`GMixModel.last_lam` and
  `GMixModel.last_sensitivity`, NaN padding dropped; metrics of the model,
  not weights, so a loaded or resumed model has them from its first step).
- `FlatnessMonitor` measures, every N epochs on a fixed held-out batch set,
  the top Hessian eigenvalue, the rho-sharpness and the 1D loss landscape,
  and logs them to TensorBoard (scalars and an image) and to PNG files.
- `ResumableTensorBoard`, `ResumableCSVLogger` and `EpochTimer` make Keras'
  TensorBoard and CSV logs continue correctly when `BackupAndRestore`
  resumes a killed run (`gmix-train --resume`).

They run on Keras' TensorFlow and JAX backends alike: every value is read
as NumPy (`keras.ops.convert_to_numpy`) before `tf.summary` writes it.

Keras' own `keras.callbacks.TensorBoard` already writes the epoch scalars
(`epoch_loss`, `epoch_sharpness`, ...) and, with `update_freq=N`, the batch
scalars (`batch_loss`, ...) of every value a GMixModel step logs.
"""

import csv
import io
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_gmix import checks, compat, flatness, flatness_plots

STEPS_RUN = "steps"  # TensorBoard run (sub-folder) of StepValuesLogger
FLATNESS_RUN = "flatness"  # TensorBoard run (sub-folder) of FlatnessMonitor


def _finite(values):
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return values[np.isfinite(values)]


def optimizer_step(optimizer):
    """The optimizer's step count as a Python int (also for distributed variables)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def current_learning_rate(optimizer):
    """The learning rate the optimizer applies now (schedules evaluated)."""
    # LossScaleOptimizer forwards `learning_rate` to its inner optimizer.
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class StepValuesLogger(keras.callbacks.Callback):
    """Writes per-step G-Mix values to TensorBoard every `update_freq` steps.

    At the end of every `update_freq`-th optimizer step (counted by
    `model.optimizer.iterations`, so a resumed run continues the count), it
    writes into `log_dir`:

    - `learning_rate`: the optimizer's current learning rate (scalar);
    - `rho`: the model's SAM radius (scalar; models without `rho` skip it);
    - `lambda`: histogram of the last step's mixing coefficients
      (`model.last_lam`), for the methods that mix;
    - `sensitivity`: histogram of the last step's sharpness-sensitivity
      s_i = l_i(w + eps) - l_i(w) (`model.last_sensitivity`), for the methods
      that perturb.

    NaN entries (the padding of `GMixModel`'s fixed-size buffers, or a
    method that does not compute the value) are dropped; a histogram with no
    finite value is not written. The buffers are not saved: after a resume
    with a schedule (`perturb_every` or `perturb_probability`: cheap steps
    compute no sensitivity), `sensitivity` starts
    again at the first full step.

    Args:
        log_dir: folder of the TensorBoard event file, e.g.
            `"<run>/tensorboard/steps"` (a run of its own beside Keras'
            `train` and `validation`).
        update_freq: int, write every this many optimizer steps.
            Defaults to `10`.
        buckets: int, histogram buckets. Defaults to `30`.

    Example:

    >>> model.fit(ds, epochs=10, callbacks=[
    ...     keras.callbacks.TensorBoard("logs", update_freq=10),
    ...     StepValuesLogger("logs/steps", update_freq=10)])
    """

    def __init__(self, log_dir, update_freq=10, buckets=30):
        super().__init__()
        update_freq = checks.check_number("update_freq", update_freq, low=1, integer=True)
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.buckets = buckets
        self._writer = None
        self._step = None

    def _get_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_train_begin(self, logs=None):
        self._step = None  # read from the optimizer at the first batch (after a restore)

    def on_train_batch_end(self, batch, logs=None):
        optimizer = self.model.optimizer
        if self._step is None:
            self._step = optimizer_step(optimizer)
        else:
            self._step += 1
        if self._step % self.update_freq:
            return
        self.write(self._step)

    def write(self, step):
        """Writes the current values at `step`."""
        model = self.model
        # record_if(True): an interrupted Keras TensorBoard callback can leave
        # its own record_if condition in force.
        with self._get_writer().as_default(step=step), tf.summary.record_if(True):
            tf.summary.scalar("learning_rate", current_learning_rate(model.optimizer))
            rho = getattr(model, "rho", None)
            if rho is not None:
                tf.summary.scalar("rho", float(rho))
            for tag, attribute in (("lambda", "last_lam"), ("sensitivity", "last_sensitivity")):
                variable = getattr(model, attribute, None)
                if variable is None:
                    continue
                values = _finite(keras.ops.convert_to_numpy(variable))
                if values.size:
                    tf.summary.histogram(tag, values, buckets=self.buckets)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


class ResumableTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` whose batch step survives `BackupAndRestore`,
    and whose epoch scalars are written every epoch whatever `update_freq` is.

    Keras' callback counts batches from 0 in every `fit` call, so a resumed
    run would write its `batch_*` scalars over the steps of the first
    attempt. This one starts the count at `model.optimizer.iterations` (read
    at the first batch, after `BackupAndRestore` has restored the optimizer).
    Epoch scalars use the epoch number, which `BackupAndRestore` restores.

    Keras leaves its batch-level `record_if(step % update_freq == 0)` in
    force at the end of an epoch, so with `update_freq=10` and 23 steps per
    epoch its `epoch_*` scalars (train and validation) reach the event file
    only for epochs whose last step is a multiple of 10. Here the epoch and
    evaluation summaries are always recorded. Same arguments as the Keras
    callback.
    """

    def on_epoch_end(self, epoch, logs=None):
        with tf.summary.record_if(True):
            super().on_epoch_end(epoch, logs)

    def on_test_end(self, logs=None):
        with tf.summary.record_if(True):
            super().on_test_end(logs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._step_synced = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self._step_synced:
            # The parent increments before writing: start one below.
            compat.set_tensorboard_train_step(self, optimizer_step(self.model.optimizer))
            self._step_synced = True
        super().on_train_batch_begin(batch, logs)


class EpochTimer(keras.callbacks.Callback):
    """Adds `seconds` (the epoch's wall time, validation included) to the epoch logs.

    Place it before the loggers (`CSVLogger`, `TensorBoard`) so that they
    record it: `history.csv`'s `seconds` column then sums to the training
    time of a run, across resumes.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._start


def check_history_covers(path, epochs, backup_dir, separator=","):
    """Refuses a resume whose history.csv lacks a row of an epoch the checkpoint holds.

    A resumed run appends to history.csv from epoch `epochs` on
    (`ResumableCSVLogger` drops the rows of later, unsaved epochs). Rows
    of the epochs before it cannot be written again, so a history that was
    emptied, deleted, cut short or garbled since would give a run whose
    record silently lacks epochs (results.json counting fewer than it
    trained).

    Args:
        path: the run's history.csv.
        epochs: int, the epochs finished according to the checkpoint.
        backup_dir: the checkpoint folder, named in the fix.
        separator: the column separator. Defaults to `","`.

    Raises:
        ValueError: naming the file, the epochs it lacks and the fix.
    """
    if epochs == 0:
        return  # a new history is started
    fix = (
        f"restore {path} from a copy, or delete the backup folder {backup_dir} to "
        "train the run again from epoch 0 (with --resume)"
    )
    if not os.path.exists(path):
        raise ValueError(
            f"{path} is missing, but the checkpoint holds {epochs} finished epochs "
            f"whose rows it should hold: {fix}."
        )
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=separator))
    except (csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is unreadable ({error}): {fix}.") from error
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    found = [_epoch_of(row) for row in body if len(row) == len(header) and _epoch_of(row) < epochs]
    if header[:1] != ["epoch"] or found != list(range(epochs)):
        missing = sorted(set(range(epochs)) - set(found))
        what = f"lacks the rows of epochs {missing}" if missing else "has damaged rows"
        raise ValueError(
            f"{path} {what}, but the checkpoint holds {epochs} finished epochs "
            f"(0 to {epochs - 1}): a resume would leave them out of the run's "
            f"record. Either {fix}."
        )


def _epoch_of(row):
    try:
        return int(row[0])
    except (ValueError, IndexError):  # a line cut short by a kill
        return math.inf


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` that keeps exactly one row per finished epoch.

    It opens the file at the first `on_epoch_begin`, when the epoch a run
    starts from is known (after `BackupAndRestore` restored it): rows of that
    epoch and later, written by an attempt that was killed before its backup,
    are dropped, and the new rows are appended. A run that starts at epoch 0
    starts a new file.

    Args:
        filename: path of the CSV file.
        separator: the column separator. Defaults to `","`.
    """

    def __init__(self, filename, separator=","):
        super().__init__(filename, separator=separator, append=True)
        # Our own copies: the parent's `filename` and `sep` are undocumented.
        self._path = os.fspath(filename)
        self._separator = separator

    def on_train_begin(self, logs=None):
        self._opened = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._opened:
            header = self._drop_rows_from(epoch)
            compat.csv_logger_write_header(self)  # the parent only ever clears it
            super().on_train_begin(logs)
            if header:
                # The kept rows' columns, not those of this attempt's first
                # epoch: with validation_freq > 1 the parent would otherwise
                # pick fewer columns when the resumed epoch validates.
                compat.csv_logger_set_columns(self, header[1:])
            self._opened = True

    def _drop_rows_from(self, epoch):
        """Drops the rows of `epoch` and later; returns the header kept (None: no file)."""
        if not os.path.exists(self._path):
            return None
        with open(self._path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=self._separator))
        header, body = (rows[0], rows[1:]) if rows else ([], [])
        kept = [row for row in body if len(row) == len(header) and _epoch_of(row) < epoch]
        if epoch == 0 or not kept:
            os.remove(self._path)
            return None
        with open(self._path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=self._separator)
            writer.writerow(header)
            writer.writerows(kept)
        return header


class FlatnessMonitor(keras.callbacks.Callback):
    """Measures flatness every N epochs on a fixed held-out batch set.

    At the end of every `every`-th epoch it computes, on `data`, with the
    functions of `keras_gmix.flatness` (which never change the weights):

    - `top_eigenvalue`: the largest Hessian eigenvalue of the loss (power
      iteration on exact Hessian-vector products);
    - `rho_sharpness`: the largest loss increase within an L2 ball of
      radius `rho` (projected gradient ascent);
    - `hessian_trace` (when `trace_samples > 0`): Hutchinson's estimate;
    - the 1D loss landscape along a filter-normalized random direction
      (the same direction seed every time).

    It writes the scalars `flatness/top_eigenvalue`, `flatness/rho_sharpness`,
    `flatness/loss` (and `flatness/hessian_trace`) and the image
    `flatness/landscape_1d` into `log_dir` at step `epoch` (0-based, like
    Keras' `epoch_*` scalars), the figure as
    `<plot_dir>/landscape_1d_epoch<NNN>.png` (1-based epoch) and one row per
    measurement in `<plot_dir>/flatness.csv`. The measurements are also kept
    in `self.records`.

    The model is evaluated in inference mode (BatchNormalization with its
    moving statistics), on `data` as given: pass held-out examples, already
    preprocessed like the training input, and not reshuffled.

    Args:
        data: a tuple `(x, y)` of arrays, or a finite `tf.data.Dataset` of
            `(x, y)` batches that yields the same examples on every pass.
        every: int, measure every this many epochs. Defaults to `1`.
        log_dir: TensorBoard folder, or None for none. Defaults to `None`.
        plot_dir: folder of the PNG files and `flatness.csv`, or None for
            none. Defaults to `None`.
        loss: the loss to measure; None uses the model's compiled loss.
            Defaults to `None`.
        rho: radius of the rho-sharpness ball. Defaults to `0.05`.
        eigenvalue_iters: power iterations. Defaults to `10`
            (`flatness.MONITOR_FLATNESS_DEFAULTS`: fewer than
            `measure_flatness`'s 20, as it measures every few epochs).
        sharpness_steps: ascent steps of rho-sharpness. Defaults to `5`
            (likewise, against 10).
        trace_samples: Hutchinson samples; 0 skips the trace. Defaults to `0`.
        landscape_points: points of the 1D landscape. Defaults to `21`.
        landscape_span: the landscape spans [-span, span]. Defaults to `1.0`.
        seed: seed of the random vectors and direction. Defaults to `0`.
        batch_size: batch size when `data` is arrays. Defaults to `256`.

    Example:

    >>> monitor = FlatnessMonitor((x_val[:256], y_val[:256]), every=5,
    ...                           log_dir="logs/flatness", plot_dir="run/flatness")
    >>> model.fit(ds, epochs=50, callbacks=[monitor])

    References:
        - [Li et al., 2018. Visualizing the loss landscape of neural
          nets](https://arxiv.org/abs/1712.09913).
        - [Foret et al., 2021. SAM](https://arxiv.org/abs/2010.01412).
    """

    def __init__(
        self,
        data,
        every=1,
        log_dir=None,
        plot_dir=None,
        loss=None,
        rho=flatness.MONITOR_FLATNESS_DEFAULTS["rho"],
        eigenvalue_iters=flatness.MONITOR_FLATNESS_DEFAULTS["eigenvalue_iters"],
        sharpness_steps=flatness.MONITOR_FLATNESS_DEFAULTS["sharpness_steps"],
        trace_samples=flatness.MONITOR_FLATNESS_DEFAULTS["trace_samples"],
        landscape_points=flatness.MONITOR_FLATNESS_DEFAULTS["landscape_points"],
        landscape_span=flatness.MONITOR_FLATNESS_DEFAULTS["landscape_span"],
        seed=flatness.MONITOR_FLATNESS_DEFAULTS["seed"],
        batch_size=flatness.MONITOR_FLATNESS_DEFAULTS["batch_size"],
    ):
        super().__init__()
        every = checks.check_number("every", every, low=1, integer=True)
        self.data = data
        self.every = every
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.plot_dir = None if plot_dir is None else os.fspath(plot_dir)
        self.loss = loss
        self.settings = dict(
            rho=rho,
            eigenvalue_iters=eigenvalue_iters,
            sharpness_steps=sharpness_steps,
            trace_samples=trace_samples,
            landscape_points=landscape_points,
            landscape_span=landscape_span,
            seed=seed,
            batch_size=batch_size,
        )
        self.records = []
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.measure(epoch)

    def measure(self, epoch):
        """Measures now and logs under `epoch` (0-based); returns the record."""
        loss = self.loss if self.loss is not None else self.model.loss
        if loss is None:
            raise ValueError("FlatnessMonitor needs a loss: pass `loss=` or compile the model.")
        measures, landscape = flatness.measure_flatness(
            self.model, self.data, loss, **self.settings
        )
        record = {"epoch": epoch + 1, **measures}
        self.records.append(record)

        title = f"epoch {epoch + 1}"
        png = io.BytesIO()
        flatness_plots.plot_landscape_1d(landscape, png, title=title)
        if self.plot_dir:
            os.makedirs(self.plot_dir, exist_ok=True)
            with open(
                os.path.join(self.plot_dir, f"landscape_1d_epoch{epoch + 1:03d}.png"), "wb"
            ) as f:
                f.write(png.getvalue())
            self._append_csv(record)
        if self.log_dir:
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            image = tf.image.decode_png(png.getvalue(), channels=4)[None]
            with self._writer.as_default(step=epoch), tf.summary.record_if(True):
                for name in ("top_eigenvalue", "rho_sharpness", "hessian_trace", "loss"):
                    if record.get(name) is not None:
                        tf.summary.scalar(f"flatness/{name}", record[name])
                tf.summary.image("flatness/landscape_1d", image)
            self._writer.flush()
        return record

    def _append_csv(self, record):
        path = os.path.join(self.plot_dir, "flatness.csv")
        fields = list(record)
        new = not os.path.exists(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow(record)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# -- the skip policy ------------------------------------------------------------


class StopAfterConsecutiveSkips(keras.callbacks.Callback):
    """Ends `fit` with an error after `limit` skipped (non-finite) steps in a row.

    GMixModel skips a step whose loss or gradient is not finite (weights,
    optimizer, BatchNorm statistics and metrics unchanged) and counts the
    skips in a row in `model.consecutive_skips`; its `fit` adds this
    callback with `max_consecutive_skips`, so that a diverged run stops
    with a sentence instead of skipping forever.
    """

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def on_train_batch_end(self, batch, logs=None):
        skips = int(keras.ops.convert_to_numpy(self.model.consecutive_skips))
        if skips >= self.limit:
            self.model.stop_training = True
            raise FloatingPointError(
                f"Training stopped: the last {skips} steps all had a non-finite loss or "
                "gradient, so each was skipped and the weights are those of the last good "
                "step. Look for NaN/inf in the data, lower the learning rate, or add "
                "gradient clipping (e.g. optimizer global_clipnorm)."
            )


class WarnOnSoftLabels(keras.callbacks.Callback):
    """Warns once, at the first batch whose labels arrive soft, that a mixing
    method mixes them a second time (`GMixModel.soft_labels_tracker`)."""

    def on_train_batch_end(self, batch, logs=None):
        if getattr(self.model, "_soft_labels_warned", False):
            return
        if float(keras.ops.convert_to_numpy(self.model.soft_labels_tracker.result())) > 0:
            self.model.warn_soft_labels()
