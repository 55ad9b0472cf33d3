"""A complete training run from a typed config: the library side of `gmix-train`.

`TrainConfig` (keras_gmix.config) holds every setting of a run; `run(config)` loads the data,
builds the model inside the distribution strategy, compiles, fits with
checkpoints that survive a kill, and writes the record of the run into its
output folder:

    config.json      the resolved config (what `--resume` and gmix-flatness read)
                     and `data_fingerprint`, what identifies the data
                     (`data.data_fingerprint`), checked on resume
    history.csv      one row per epoch: fit's logs and `seconds`
    tensorboard/     TensorBoard runs: train/ and validation/ (Keras' epoch
                     and batch scalars), steps/ (learning rate, rho,
                     histograms of lambda and of the sharpness-sensitivity),
                     flatness/ (with --flatness-every)
    flatness/        FlatnessMonitor's PNGs and flatness.csv (--flatness-every)
    backup/          atomic checkpoints of the last finished epoch
                     (`checkpoint.BackupAndRestore`; removed when a run ends)
    model.keras      the trained GMixModel
    results.json     test accuracy and loss, method, epochs, seconds, ...
    .lock            locked (`fcntl.flock`) by the one process writing the
                     folder; it names that process (`records.hold_run_folder`)

A killed run continues with `resume=True` (`--resume`): the backup restores
the weights, the optimizer (its step count drives the learning-rate
schedule), GMixModel's mixing counter and the epoch, and fit continues with
the next epoch; history.csv keeps one row per finished epoch. A resume
continues the run in the folder or is refused: the folder and a readable
config.json must exist, only `RESUMABLE_FIELDS` may differ from it, the data
must be what config.json's fingerprint describes, and history.csv must hold
the rows of every epoch the checkpoint holds. The training
pipeline's shuffling and "standard" augmentation are keyed by (seed,
epoch), so the resumed run sees the batches the uninterrupted run saw: with
`deterministic=True`, on one CPU device, with augment "none" or "standard",
it ends with the same weights, bit for bit. (Keras' RandAugment and
RandomErasing layers keep their own random state, which is not restored.)
"""

import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_gmix import backend, records
from keras_gmix import callbacks as callbacks_lib
from keras_gmix import checkpoint as checkpoint_lib
from keras_gmix import config as config_lib
from keras_gmix import data as data_lib
from keras_gmix import layers as layers_lib
from keras_gmix import models as models_lib
from keras_gmix.config import TrainConfig  # noqa: F401  (re-exported: what `run` takes)
from keras_gmix.gradients import PERTURBED_METHODS
from keras_gmix.model import GMixModel
from keras_gmix.schedules import (
    LinearWarmup,  # noqa: F401  (re-exported)
    learning_rate_schedule,
)


def make_strategy(distribute):
    if distribute not in backend.STRATEGIES:
        raise ValueError(
            f"`distribute={distribute!r}` is a tf.distribute strategy, which Keras' "
            f"{backend.NAME} backend does not run: use `distribute='none'` there, or "
            "train on the TensorFlow backend (gmix-train --backend tensorflow)."
        )
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this worker writes the run's record (always, on one worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def build_model(config, splits, inner=None):
    """The GMixModel of `config` around `inner`.

    Args:
        config: a `TrainConfig`.
        splits: the data's `Splits` (for the classes and the input shape).
        inner: a `keras.Model` (logits out) to wrap instead of
            `config.model`, e.g. a network the model registry lacks; its
            weight decay is then the caller's. Defaults to `None`.
    """
    if inner is None:
        inner = models_lib.build_model(
            config.model,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            weight_decay=config.weight_decay / 2,
            classifier_activation=None,  # logits: the loss applies the softmax stably
            batchnorm=keras.layers.BatchNormalization
            if config.stock_batchnorm
            else layers_lib.BatchNormalization,
        )
    return GMixModel(
        inner,
        method=config.method,
        rho=config.rho,
        alpha=config.alpha,
        sensitive_fraction=config.sensitive_fraction,
        adaptive=config.adaptive,
        eta=config.eta,
        mix=config.mix,
        seed=config.seed,
        perturb_every=config.perturb_every,
        reuse_scale=config.reuse_scale,
        perturb_probability=config.perturb_probability,
        perturb_from=config.perturb_from,
        keep_first_pass=config.keep_first_pass,
    )


def schedule_of(config, steps_per_epoch):
    """The learning-rate schedule of a `TrainConfig` (`schedules.learning_rate_schedule`)."""
    return learning_rate_schedule(
        learning_rate=config.learning_rate,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        schedule=config.schedule,
        warmup_epochs=config.warmup_epochs,
        step_milestones=config.step_milestones,
        step_gamma=config.step_gamma,
    )


def build_compiled_model(config, splits, steps_per_epoch, inner=None):
    """The GMixModel of `config`, compiled with its optimizer, schedule and loss.

    Call it inside the strategy's scope. With `label_smoothing`, the loss
    expects one-hot labels. `inner`: as in `build_model`. A `perturb_from`
    given as a fraction of the run is resolved with `steps_per_epoch`.
    """
    model = build_model(config_lib.resolve_perturb_from(config, steps_per_epoch), splits, inner)
    optimizer = keras.optimizers.SGD(
        schedule_of(config, steps_per_epoch),
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    if config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        )
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    jit = config_lib.resolve_jit(config, keras.backend.backend())
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit)
    return model


def default_output():
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def _check_new_output(output):
    """Refuses to start a new run over an existing one; says what to do instead."""
    if os.path.exists(os.path.join(output, "backup")):
        raise ValueError(
            f"{output} holds an unfinished run: pass --resume to continue it, "
            "or choose another --output."
        )
    if os.path.exists(os.path.join(output, "results.json")) or records.read_history(
        os.path.join(output, "history.csv")
    ):
        raise ValueError(
            f"{output} holds a finished run (results.json, history.csv): choose "
            "another --output, or delete the folder to train again."
        )


def _held_out_examples(splits, count, to_one_hot):
    """The first `count` test examples, preprocessed like the test pipeline."""
    pipeline = data_lib.make_pipeline(
        splits.x_test[:count],
        splits.y_test[:count],
        512,
        training=False,
        normalization=(splits.mean, splits.std),
    )
    xs, ys = zip(*pipeline.as_numpy_iterator())
    x, y = np.concatenate(xs), np.concatenate(ys)
    if to_one_hot:
        y = np.eye(splits.num_classes, dtype=np.float32)[y]
    return x, y


def run(config, callbacks=None):
    """Trains as `config` says; returns the results dict (also in results.json).

    Args:
        config: a `TrainConfig`.
        callbacks: extra Keras callbacks, run after the run's own ones
            (after the backup of each epoch). Defaults to `None`.

    Returns:
        The dict written to results.json.
    """
    config.validate()
    output = config.output or default_output()
    config = dataclasses.replace(config_lib.resolved(config), output=output)
    strategy = make_strategy(config.distribute)
    folder = record_folder(output, strategy)
    if config.resume and not os.path.isdir(folder):
        # A typo in --output would otherwise start a new run there.
        raise FileNotFoundError(
            f"Cannot resume: {folder} does not exist. Check the --output path, "
            "or drop --resume to start a new run there."
        )
    records.check_output_folder(folder)
    created = not os.path.exists(folder)
    held = False
    try:
        os.makedirs(folder, exist_ok=True)
        with records.hold_run_folder(folder):
            held = True
            return _run_held(config, folder, strategy, list(callbacks or []))
    except BaseException as error:
        # Never another process's folder, nor a run to resume.
        if held and not config.resume:
            records.discard_unstarted_run(folder, created)
        if isinstance(error, OSError) and not isinstance(error, records.RecordWriteError):
            # A full or read-only disk, wherever in the run: one sentence.
            replacement = records.record_write_error(error, folder)
            if replacement is not None:
                raise replacement from error
        raise


def record_folder(output, strategy):
    """The folder this process writes: `output`, or on a multi-worker run's
    other workers a scratch folder inside it."""
    if is_chief(strategy):
        return output
    return os.path.join(output, f"worker{strategy.cluster_resolver.task_id}")


def _write_config(folder, values):
    # Atomic: a kill mid-write must not leave --resume an empty config.json.
    records.atomic_write_text(os.path.join(folder, "config.json"), json.dumps(values, indent=2))


def _data_fingerprint(config):
    return data_lib.data_fingerprint(config.dataset, config.test_dataset, config.data_dir)


def _check_resume(config, folder, finished):
    """Refuses a resume that would change the run; returns the saved config.json."""
    saved = records.read_json(
        os.path.join(folder, "config.json"), config_lib.missing_config_fix(folder)
    )
    if finished and config.epochs != saved["epochs"]:
        raise ValueError(
            f"{folder} finished its {saved['epochs']} epochs and kept no "
            "checkpoint to continue from: start a new run with "
            f"epochs={config.epochs} in another --output."
        )
    differences = config_lib.resume_differences(saved, config)
    if differences:
        raise ValueError(
            f"Cannot resume {folder} with other settings than it was started "
            f"with: {'; '.join(differences)}. Only {list(config_lib.RESUMABLE_FIELDS)} may "
            "change on --resume (epochs only grow, and only with schedule "
            "'constant'). Drop those flags to continue the run as it was "
            "(`gmix-train --resume --output DIR` alone reads config.json), or start "
            "a new run in another --output."
        )
    return saved


def _check_backup_is_this_runs(config, folder, backup_dir):
    """Refuses a resume whose checkpoint was written by a run with other
    settings than config.json (and the flags) now give: config.json edited
    by hand since the kill, or another run's backup copied in. A backup
    written before its state.json carried the run is not checked."""
    run = checkpoint_lib.saved_run(backup_dir)
    if run is None:
        return
    differences = config_lib.resume_differences(run, config)
    if differences:
        raise ValueError(
            f"Cannot resume {folder}: its checkpoint ({backup_dir}) was written by a "
            f"run with other settings than config.json gives now: {'; '.join(differences)}. "
            "config.json was changed since the run began, or the backup comes from "
            "another run: put the run's own config.json (or backup) back, or start a "
            "new run in another --output."
        )


def _check_finished_run_is_whole(folder, backup_dir, results_path, finished):
    """Refuses a resume of a finished run whose model.keras or results.json
    is gone (a run deletes its backup only after writing both), instead of
    reporting it finished or training it again over its model."""
    model_path = os.path.join(folder, "model.keras")
    if finished and not os.path.exists(model_path):
        raise ValueError(
            f"{folder} is finished, but its model.keras is missing: restore it from a "
            "copy, or train again in another --output."
        )
    if not finished and not os.path.exists(backup_dir) and os.path.exists(model_path):
        raise ValueError(
            f"{folder} is finished (its model.keras is there and its backup is gone), "
            f"but its results.json is missing: restore {results_path} from a copy, or "
            "train again in another --output."
        )


def _check_same_data(saved, config, folder):
    """Refuses a resume on other data than the run began with (config.json's
    `data_fingerprint`; a config.json written before it existed is not checked)."""
    if "data_fingerprint" not in saved:
        return
    for part, path in (("train", config.dataset), ("test", config.test_dataset)):
        began = data_lib.recorded_path(saved["data_fingerprint"], part, path)
        if began is not None:
            # A relative path is relative to where the run began.
            raise ValueError(
                f"Cannot resume {folder}: its config.json names the {part} data by a "
                f"relative path, {path!r}, which the run began with as {began}: run "
                f"--resume from the directory it began in ({_began_in(began, path)})."
            )
    changes = data_lib.fingerprint_changes(saved["data_fingerprint"], _data_fingerprint(config))
    if changes:
        raise ValueError(
            f"Cannot resume {folder}: its data changed since the run began "
            f"({'; '.join(changes)}). Put the run's data back as it was, or start a "
            "new run on this data in another --output (without --resume)."
        )


def _began_in(absolute, relative):
    """The directory from which `relative` named `absolute`."""
    parts = os.path.normpath(relative).split(os.sep)
    head = os.path.normpath(absolute)
    for _ in parts:
        head = os.path.dirname(head)
    return head


def _run_held(config, output, strategy, extra_callbacks):
    """`run` once this process holds the run folder `output`."""
    backup_dir = os.path.join(output, "backup")
    results_path = os.path.join(output, "results.json")
    if config.resume:
        finished = not os.path.exists(backup_dir) and os.path.exists(results_path)
        saved = _check_resume(config, output, finished)
        _check_finished_run_is_whole(output, backup_dir, results_path, finished)
        if finished:
            # Finished already: nothing to continue.
            results = records.read_json(
                results_path,
                "restore it from a copy, or delete the run folder to train again "
                "(model.keras beside it holds the trained model)",
            )
            if config.verbose:
                print(f"gmix-train: {output} is finished already; nothing to resume.")
            return results
        records.check_writable(output)
        _check_backup_is_this_runs(config, output, backup_dir)
        _check_same_data(saved, config, output)
        relabelled = {
            key: getattr(config, key)
            for key in ("epochs", "output")
            if getattr(config, key) != saved.get(key)
        }
        if relabelled:
            # The record says what the run is now: how long it trains, and
            # where it lives (a run folder moved between a stop and --resume).
            _write_config(output, dict(saved, **relabelled))
    else:
        _check_new_output(output)
        _write_config(output, dict(config.to_dict(), data_fingerprint=_data_fingerprint(config)))

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        return _run(config, output, backup_dir, results_path, strategy, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def fit_and_evaluate(
    model,
    train_ds,
    test_ds,
    *,
    epochs,
    steps_per_epoch,
    callbacks,
    loggers,
    verbose,
    validation_freq=1,
):
    """Fits `model` on `train_ds` (validating on `test_ds`), then evaluates it on `test_ds`.

    Args:
        model: a compiled model.
        train_ds: the training `tf.data.Dataset`, shuffled by itself (fit
            does not shuffle).
        test_ds: the held-out `tf.data.Dataset`.
        epochs: int, the last epoch (a resumed fit starts at its backup's).
        steps_per_epoch: int, or `None` for one pass over a finite `train_ds`.
        callbacks: all Keras callbacks of the fit.
        loggers: those of `callbacks` to close (`on_train_end`) when fit is
            interrupted; not a backup, which is what a resume continues from.
        verbose: fit's verbosity.
        validation_freq: validate every this many epochs. Defaults to 1.

    Returns:
        `(history, wall_seconds, test)`: fit's `History.history`, the
        seconds of this fit, and the `evaluate` metrics dict.
    """
    start = time.time()
    try:
        history = model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=test_ds,
            validation_freq=validation_freq,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
        )
    except BaseException:
        # fit calls no on_train_end when it is interrupted: close the loggers'
        # files and writers (Keras' TensorBoard would otherwise leave its
        # summary context in force for the rest of the process).
        for callback in loggers:
            try:
                callback.on_train_end()
            except Exception:  # noqa: BLE001  the original error matters more
                pass
        raise
    wall_seconds = time.time() - start
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    return history.history, wall_seconds, test


def _run(config, output, backup_dir, results_path, strategy, extra_callbacks):
    # The stream of epochs starts where the backup ends, so that a resumed
    # run's epoch k has the shuffling and augmentation of epoch k.
    start_epoch = checkpoint_lib.resume_epoch(backup_dir, strategy) if config.resume else 0
    callbacks_lib.check_history_covers(os.path.join(output, "history.csv"), start_epoch, backup_dir)
    splits = data_lib.load_dataset(**config_lib.data_arguments(config))
    train_ds, test_ds = data_lib.make_pipelines(
        splits, config.batch_size, augment=config.augment, seed=config.seed, start_epoch=start_epoch
    )
    steps_per_epoch = math.ceil(splits.train_size / config.batch_size)
    resolved = config_lib.resolve_perturb_from(config, steps_per_epoch)
    if resolved.perturb_from != config.perturb_from:
        # Saved resolved: a resume, or a longer run, keeps the same step.
        config = resolved
        _write_config(output, config.to_dict())
    total_steps = config.epochs * steps_per_epoch
    if config.perturb_from >= total_steps and config.method in PERTURBED_METHODS:
        # Legal (a later --resume --epochs N may reach it), but this run
        # alone would never perturb: said, whatever the verbosity.
        print(
            f"gmix-train: warning: perturb_from={config.perturb_from} lies beyond this run's "
            f"last step ({total_steps}: {config.epochs} epochs of {steps_per_epoch}); no step "
            f"of it is a full {config.method} step.",
            file=sys.stderr,
        )
    elif config.verbose and config.perturb_from > 0 and config.method in PERTURBED_METHODS:
        epoch, batch = divmod(config.perturb_from, steps_per_epoch)
        print(
            f"gmix-train: plain steps until step {config.perturb_from} (epoch {epoch + 1}, "
            f"batch {batch + 1}), full steps from there on (perturb_from); the full_step "
            "column of history.csv shows the switch."
        )
    one_hot = bool(config.label_smoothing)
    if one_hot:
        # Keras' label smoothing needs one-hot labels.
        to_one_hot = lambda x, y: (x, tf.one_hot(y, splits.num_classes))  # noqa: E731
        train_ds, test_ds = train_ds.map(to_one_hot), test_ds.map(to_one_hot)

    with strategy.scope():
        model = build_compiled_model(config, splits, steps_per_epoch)

    tensorboard = os.path.join(output, "tensorboard")
    # Order matters at epoch end: the timer adds `seconds` before the loggers
    # record it; the backup comes last, so that a run killed before its
    # backup redoes the epoch (and the CSV logger drops the stale row).
    loggers = [
        callbacks_lib.EpochTimer(),
        callbacks_lib.ResumableCSVLogger(os.path.join(output, "history.csv")),
        callbacks_lib.ResumableTensorBoard(tensorboard, update_freq=config.tensorboard_update_freq),
        callbacks_lib.StepValuesLogger(
            os.path.join(tensorboard, callbacks_lib.STEPS_RUN),
            update_freq=config.tensorboard_update_freq,
        ),
    ]
    if config.flatness_every:
        loggers.append(
            callbacks_lib.FlatnessMonitor(
                _held_out_examples(splits, config.flatness_examples, one_hot),
                every=config.flatness_every,
                log_dir=os.path.join(tensorboard, callbacks_lib.FLATNESS_RUN),
                plot_dir=os.path.join(output, "flatness"),
                rho=config.rho if config.rho > 0 else 0.05,
                seed=config.seed,
            )
        )
    # Kept until the results are written: a kill before that resumes
    # from the last epoch instead of training again from epoch 0.
    backup = checkpoint_lib.BackupAndRestore(
        backup_dir, delete_checkpoint=False, run=config.to_dict()
    )
    callbacks = loggers + [backup] + extra_callbacks

    _, wall_seconds, test = fit_and_evaluate(
        model,
        train_ds,
        test_ds,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,  # the training stream is endless
        callbacks=callbacks,
        loggers=loggers,
        verbose=config.verbose,
    )
    history = records.read_history(os.path.join(output, "history.csv"))
    last = history[-1] if history else {}
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "backend": config.backend,
        "epochs": config.epochs,
        "epochs_done": len(history),
        "seed": config.seed,
        "class_names": None if splits.class_names is None else list(splits.class_names),
        "train_size": splits.train_size,
        "test_size": splits.test_size,
        "steps_per_epoch": steps_per_epoch,
        "parameters": int(model.inner.count_params()),
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "final_train": {
            k: v
            for k, v in last.items()
            if k not in ("epoch", "seconds") and not k.startswith("val_")
        },
        # Training time over all attempts of the run (history.csv's epoch
        # times, validation included); wall_seconds: this process's fit.
        "seconds": round(float(sum(row.get("seconds", 0.0) for row in history)), 2),
        "wall_seconds": round(wall_seconds, 2),
        "output": output,
    }
    # Each file appears whole or not at all; the backup goes last.
    model_tmp = os.path.join(output, ".tmp-model.keras")
    model.save(model_tmp)
    records.replace_durably(model_tmp, os.path.join(output, "model.keras"))
    records.atomic_write_text(results_path, json.dumps(results, indent=2))
    checkpoint_lib.remove(backup_dir)
    return results
