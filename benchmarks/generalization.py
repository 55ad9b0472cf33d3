"""Test accuracy of the six methods on real data with little of it.

Data sets: `mnist1d` (MNIST-1D, 4,000 training / 10,000 test examples,
a 1D CNN from `mnist1d_data.py`), `cifar10_partial:2500` and
`cifar10_partial:5438` (../shared/data/cifar10_partial.npz: a class-balanced
2,500-image subset, or all 5,438 training images; 1,017 test images;
ResNet-8 with the fused BatchNormalization, pad-crop and flip). Every method
trains with its data set's budget (`BUDGETS`: epochs, batch, SGD with
Nesterov momentum 0.9, cosine decay to 0, learning rate, weight decay);
alpha and rho come from a sweep (`--sweep`) on a class-balanced fifth of
the training set, never the test set. benchmarks/README.md has the plan,
why each budget and model, and how to run it.

Every finished run writes one JSON file (config, per-epoch history, test
accuracy, seconds, top Hessian eigenvalue) under
`<out>/generalization_runs/<dataset>/<subset>/<method>_seed<k>.json` (sweep
runs under `.../sweep/`), and runs whose file exists are skipped. A run
trains with the pieces `gmix-train` uses (`keras_gmix.train.TrainConfig`,
`build_compiled_model`, `fit_and_evaluate`); a process claims it with an OS
lock on `<run>.json.claim`, so two processes share a plan. `--report`
(`generalization_report.py`) builds generalization.md/.json and the figures
from whatever exists and marks missing runs.

Usage:

    python benchmarks/generalization.py --sweep            # sweeps (skips done ones)
    python benchmarks/generalization.py                    # all main runs
    python benchmarks/generalization.py --report           # md + json + png
    python benchmarks/generalization.py --datasets mnist1d --methods erm gmix --seeds 0
"""

import argparse
import datetime
import functools
import math
import os
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from generalization_plan import (  # noqa: E402  (after the sys.path line)
    BUDGETS,
    DATASETS,
    METHODS,
    SCHEDULE_VARIANTS,
    budget_epochs,
    chosen_hparams,
    is_resumable,
    method_hparams,
    parse_dataset,
    parse_variant,
    run_dir,
    sweep_dataset,
    sweep_path,
    sweep_plan,
    variant_suffix,
    write_json,
)

DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "cifar10_partial.npz")
DEFAULT_OUT = os.path.join(HERE, "results")
SUBSET_SEED = 0  # the CIFAR-10 (partial) 2,500-image subset never changes
VAL_SEED = 1  # the validation split of the sweep
VAL_FRACTION = 0.2


class Task:
    """Arrays and tf.data pipelines of one data set and training subset."""

    def __init__(self, key, data_path):
        import keras_gmix as kg

        self.key = key
        self.name, self.subset = parse_dataset(key)
        self.budget = BUDGETS[self.name]
        if self.name == "mnist1d":
            from mnist1d_data import load_mnist1d

            self.x_train, self.y_train, self.x_test, self.y_test = load_mnist1d()
            self.num_classes, self.normalization, self.flip = 10, None, False
            self.splits = None
        else:
            size = int(self.subset)
            splits = kg.data.load_dataset(
                os.path.abspath(data_path),
                seed=SUBSET_SEED,
                train_size=None if size == 5438 else size,
            )
            if splits.train_size != size:
                raise ValueError(
                    f"{data_path} holds {splits.train_size} training images, not {size}."
                )
            self.x_train, self.y_train = splits.x_train, splits.y_train
            self.x_test, self.y_test = splits.x_test, splits.y_test
            self.num_classes, self.flip = splits.num_classes, splits.flip
            self.normalization = (splits.mean, splits.std)
            self.splits = splits  # classes and input shape of `TrainConfig.model`

    def validation_split(self):
        """(x_fit, y_fit, x_val, y_val): a class-balanced fifth held out for the sweep."""
        import numpy as np

        import keras_gmix as kg

        n_val = int(round(VAL_FRACTION * len(self.y_train)))
        val = kg.data.balanced_subset_indices(self.y_train, n_val, self.num_classes, seed=VAL_SEED)
        fit = np.setdiff1d(np.arange(len(self.y_train)), val)
        return self.x_train[fit], self.y_train[fit], self.x_train[val], self.y_train[val]

    def pipeline(self, x, y, batch_size, training, seed, start_epoch=None):
        import tensorflow as tf

        import keras_gmix as kg

        if self.name == "mnist1d":
            if start_epoch is not None:
                raise ValueError("the mnist1d pipeline is not keyed by the epoch")
            ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
            if training:
                ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        return kg.data.make_pipeline(
            x,
            y,
            batch_size,
            training=training,
            augment="standard",
            seed=seed,
            normalization=self.normalization,
            flip=self.flip,
            start_epoch=start_epoch,
        )

    def eigen_data(self):
        """A fixed subset of training examples, preprocessed like the test data."""
        import numpy as np

        n = self.budget["eigen_examples"]
        xs, ys = zip(
            *self.pipeline(self.x_train[:n], self.y_train[:n], 256, False, 0).as_numpy_iterator()
        )
        return np.concatenate(xs), np.concatenate(ys)

    def inner(self):
        """The network `build_compiled_model` wraps: MNIST-1D's CNN, or None
        for `TrainConfig.model` (ResNet-8 with the fused BatchNormalization)."""
        if self.name != "mnist1d":
            return None
        from mnist1d_data import build_mnist1d_cnn

        # PyTorch-style coupled decay, as gmix-train.
        return build_mnist1d_cnn(self.num_classes, weight_decay=self.budget["weight_decay"] / 2)


def epoch_clocks():
    """An `EpochTimer` that also logs the epoch's `cpu_seconds` (all threads)."""
    import keras_gmix as kg

    class Clocks(kg.callbacks.EpochTimer):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self._cpu_start = time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if logs is not None:
                logs["cpu_seconds"] = time.process_time() - self._cpu_start

    return Clocks()


def history_from_rows(rows):
    """A `History.history`-like dict from `read_history` rows, one per epoch:
    `val_*` only at the epochs that validated, as in Keras' History."""
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    history = {
        key: [r[key] for r in rows if not (key.startswith("val_") and math.isnan(r[key]))]
        for key in keys
    }
    # Keras' CSVLogger adds a val_ column for every key (val_seconds, ...).
    return {key: values for key, values in history.items() if values}


def train_run(
    task,
    method,
    seed,
    epochs,
    rho,
    alpha,
    validation=False,
    eigen=True,
    verbose=0,
    backup_dir=None,
    step_schedule=None,
):
    """Trains one model; returns the result dict (the run's JSON file).

    With `backup_dir`, the run checkpoints every epoch there and continues
    from its last checkpoint if one is there (the training stream is keyed
    by the epoch, so the resumed run sees the batches it would have seen).
    """
    import keras

    import keras_gmix as kg
    from keras_gmix import train
    from keras_gmix.flatness import hessian_top_eigenvalue

    budget = task.budget
    if validation:
        x_fit, y_fit, x_eval, y_eval = task.validation_split()
    else:
        x_fit, y_fit, x_eval, y_eval = task.x_train, task.y_train, task.x_test, task.y_test
    config = train.TrainConfig(
        dataset=task.key,
        model=budget.get("model", "mnist1d_cnn"),
        method=method,
        epochs=epochs,
        batch_size=budget["batch_size"],
        learning_rate=budget["learning_rate"],
        momentum=0.9,
        nesterov=True,
        weight_decay=budget["weight_decay"],
        schedule="cosine",
        rho=rho,
        alpha=alpha,
        seed=seed,
        verbose=verbose,
        **(step_schedule or {}),
    )
    keras.utils.set_random_seed(seed)
    start_epoch = None if backup_dir is None else kg.checkpoint.saved_epoch(backup_dir)
    train_ds = task.pipeline(
        x_fit, y_fit, budget["batch_size"], True, seed, start_epoch=start_epoch
    )
    eval_ds = task.pipeline(x_eval, y_eval, 512, False, seed)
    steps = math.ceil(len(y_fit) / budget["batch_size"])
    model = train.build_compiled_model(config, task.splits, steps, inner=task.inner())
    eval_every = max(1, min(budget["eval_every"], epochs))
    loggers = [epoch_clocks()]  # first: the loggers after it record its values
    callbacks = list(loggers)
    if backup_dir is not None:
        os.makedirs(backup_dir, exist_ok=True)
        csv_path = os.path.join(backup_dir, "history.csv")
        loggers.append(kg.callbacks.ResumableCSVLogger(csv_path))
        callbacks = loggers + [kg.checkpoint.BackupAndRestore(backup_dir, delete_checkpoint=False)]
    history, wall_seconds, final = train.fit_and_evaluate(
        model,
        train_ds,
        eval_ds,
        epochs=epochs,
        # The keyed stream is endless: an epoch is one pass over the examples.
        steps_per_epoch=None if backup_dir is None else steps,
        callbacks=callbacks,
        loggers=loggers,
        verbose=verbose,
        validation_freq=eval_every,
    )
    if backup_dir is not None:  # every attempt's epochs, not only this one's
        history = history_from_rows(kg.records.read_history(csv_path))
    result = {
        "dataset": task.name,
        "subset": task.subset,
        "method": "-".join([method] + variant_suffix(step_schedule)),
        "seed": seed,
        "config": {
            "epochs": epochs,
            "batch_size": budget["batch_size"],
            "learning_rate": budget["learning_rate"],
            "weight_decay": budget["weight_decay"],
            "optimizer": "SGD(momentum=0.9, nesterov=True), cosine decay to 0",
            "rho": rho,
            "alpha": alpha,
            "sensitive_fraction": config.sensitive_fraction,
            **({"schedule": step_schedule} if step_schedule else {}),
            # A fraction of the run resolved into the step it names.
            **(
                {"perturb_from_step": model.perturb_from}
                if "perturb_from" in (step_schedule or {})
                else {}
            ),
            "model": "mnist1d_cnn" if task.name == "mnist1d" else f"{budget['model']} (fused BN)",
            "augment": "none" if task.name == "mnist1d" else "standard (pad 4, crop, flip)",
            "training_stream": "seeded reshuffle every epoch"
            if backup_dir is None
            else "keyed by (seed, epoch), resumable",
            "train_examples": int(len(y_fit)),
            "eval_examples": int(len(y_eval)),
            "evaluated_on": "validation split of the training set" if validation else "test set",
            "parameters": int(model.inner.count_params()),
        },
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "eval_every": eval_every,
        ("val_accuracy" if validation else "test_accuracy"): float(final["accuracy"]),
        ("val_loss" if validation else "test_loss"): float(final["loss"]),
        "seconds": round(float(sum(history["seconds"])), 1),
        # This attempt's fit only, when the run was resumed.
        "wall_seconds": round(wall_seconds, 1),
        # CPU time of all the process' threads: far less disturbed than the
        # wall-clock seconds when another run shares the two cores.
        "cpu_seconds": round(float(sum(history["cpu_seconds"])), 1),
        # None: not resumable; else the epoch its last attempt started at
        # (0: it ran in one go).
        "last_attempt_started_at_epoch": start_epoch,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if eigen:
        x, y = task.eigen_data()
        start = time.time()
        eig = hessian_top_eigenvalue(
            model,
            (x, y),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            iters=budget["eigen_iters"],
            seed=0,
            tol=1e-3,
            batch_size=256,
        )
        result["hessian_top_eigenvalue"] = {
            "value": float(eig.value),
            "history": [float(v) for v in eig.history],
            "converged": bool(eig.converged),
            "examples": int(len(y)),
            "seconds": round(time.time() - start, 1),
        }
    return result


def claim(path):
    """Claims the run that writes `path` for this process.

    Two processes on the same plan share the runs instead of training the
    same one twice: each locks `path + ".claim"` (`records.lock_file`, an OS
    lock the kernel releases when its process dies, however it dies).

    Returns:
        The descriptor holding the claim (give it to `release`), or None
        when the run is done or another live process holds it.
    """
    from keras_gmix import records

    if os.path.exists(path):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = records.lock_file(path + ".claim")
    if fd is not None and os.path.exists(path):  # finished by another process since we looked
        os.close(fd)
        return None
    return fd


def release(path, fd):
    """Ends the claim `fd` of the run that writes `path`.

    The claim file goes only once the run's result exists: a process that
    locks the file after that finds the result and skips the run. A failed
    run leaves the (unlocked) file, which the next claim takes.
    """
    if os.path.exists(path):
        try:
            os.remove(path + ".claim")
        except FileNotFoundError:
            pass
    os.close(fd)


@functools.lru_cache(maxsize=None)
def load_task(key, data_path):
    """The Task of `key`, loaded once, by the first run this process claims."""
    return Task(key, data_path)


def run_once(path, label, train, backup_dir=None):
    """Trains the run that writes `path` unless it is done or claimed by
    another process; returns its result, or None when it was skipped.

    `train()` returns the result; `backup_dir`, the run's checkpoints, goes
    once the result is written.
    """
    fd = claim(path)
    if fd is None:
        return None
    try:
        print(label, flush=True)
        result = train()
        write_json(path, result)
        if backup_dir is not None:
            from keras_gmix.checkpoint import remove

            remove(backup_dir)
    finally:
        release(path, fd)
    return result


def do_sweep(args):
    for key in args.datasets:
        name, _ = parse_dataset(key)
        sname, ssubset = sweep_dataset(name)
        if (sname, ssubset) != parse_dataset(key):
            continue  # the 5,438 set uses the 2,500 set's sweep
        epochs = args.epochs or BUDGETS[name]["sweep_epochs"]
        for _ in range(2):  # the second pass adds G-Mix once alpha is known
            for method, rho, alpha in sweep_plan(args.out, name):
                result = run_once(
                    sweep_path(args.out, sname, ssubset, method, rho, alpha, epochs),
                    f"[sweep] {key} {method} rho={rho} alpha={alpha} epochs={epochs}",
                    lambda: train_run(
                        load_task(key, args.data),
                        method,
                        0,
                        epochs,
                        rho,
                        alpha,
                        validation=True,
                        eigen=False,
                        verbose=args.verbose,
                    ),
                )
                if result is not None:
                    print(
                        f"[sweep] -> val accuracy {result['val_accuracy']:.4f} "
                        f"({result['seconds']:.0f} s)",
                        flush=True,
                    )


def do_runs(args):
    for key in args.datasets:
        name, subset = parse_dataset(key)
        alpha, rho_sam, rho_gmix = chosen_hparams(args.out, name)
        if args.alpha is not None:
            alpha = args.alpha
        if args.rho is not None:
            rho_sam = rho_gmix = args.rho
        epochs = args.epochs or budget_epochs(name, subset)
        for seed in args.seeds:
            for variant in args.methods:
                method, schedule = parse_variant(variant)
                rho, a = method_hparams(method, alpha, rho_sam, rho_gmix)
                if rho is None or a is None:
                    print(
                        f"[skip] {key} {method}: the sweep is incomplete (run --sweep first, "
                        "or pass --rho and --alpha)",
                        flush=True,
                    )
                    continue
                # Another budget than the data set's (--epochs): a budget check, kept apart.
                suffix = "" if epochs == budget_epochs(name, subset) else f"_e{epochs}"
                path = os.path.join(
                    run_dir(args.out, name, subset), f"{variant}_seed{seed}{suffix}.json"
                )
                # Checkpoints of the run, removed once its result is written.
                backup_dir = (
                    path[: -len(".json")] + ".backup" if is_resumable(name, subset) else None
                )
                result = run_once(
                    path,
                    f"[run] {key} {variant} seed={seed} rho={rho} alpha={a} epochs={epochs}",
                    lambda: train_run(
                        load_task(key, args.data),
                        method,
                        seed,
                        epochs,
                        rho,
                        a,
                        verbose=args.verbose,
                        backup_dir=backup_dir,
                        step_schedule=schedule,
                    ),
                    backup_dir,
                )
                if result is not None:
                    print(
                        f"[run] -> test accuracy {result['test_accuracy']:.4f} "
                        f"({result['seconds']:.0f} s, "
                        f"eigenvalue {result['hessian_top_eigenvalue']['value']:.2f})",
                        flush=True,
                    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="path of cifar10_partial.npz")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help=f"of {DATASETS}")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        help=f"methods {METHODS} or schedules such as {SCHEDULE_VARIANTS[:3]}",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the budget (default: BUDGETS)"
    )
    parser.add_argument("--rho", type=float, default=None, help="override the swept rho")
    parser.add_argument("--alpha", type=float, default=None, help="override the swept alpha")
    parser.add_argument("--sweep", action="store_true", help="run the (alpha, rho) sweep")
    parser.add_argument(
        "--report",
        action="store_true",
        help="only build the reports: generalization and schedules .md/.json/.png",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--verbose", type=int, default=2, help="fit's verbosity (2: a line per epoch)"
    )
    args = parser.parse_args(argv)
    for key in args.datasets:
        parse_dataset(key)
    for variant in args.methods:
        try:
            parse_variant(variant)
        except ValueError as error:
            parser.error(str(error))
    print(
        "command:",
        " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + sys.argv[1:]),
        flush=True,
    )
    if args.report:
        import schedule_report
        from generalization_report import write_report

        write_report(args)
        # The efficient schedules' accuracy/cost table and frontier figure
        # (schedules.md/.json/.png), from the same run files.
        schedule_report.write(args.out)
    elif args.sweep:
        do_sweep(args)
    else:
        do_runs(args)


if __name__ == "__main__":
    main()
