"""One worker of a MultiWorkerMirroredStrategy run on 127.0.0.1 (TF_CONFIG set by the test).

Usage: python multiworker_worker.py OUTPUT.npz METHOD SYNC(0|1) [--no-workaround]
           [--epochs N] [--backup DIR] [--step-seconds S] [--die-before-commit N]

Trains a small MLP for two epochs on a fixed data set batched at the global
batch size (auto-sharding by DATA gives each worker its part of every global
batch) and saves the final weights and the History to OUTPUT.npz.
`--no-workaround` turns GMixModel's keras-team/keras#20585 workaround off,
to check that Keras still needs it. `--backup DIR` adds
keras_gmix.checkpoint.BackupAndRestore (a restarted cluster resumes from it);
`--step-seconds` slows every step down, so that a test can kill a worker
mid-training. `--die-before-commit N` kills worker 1 at the end of epoch N
(counting from 1), before its checkpoint of that epoch is written, while
worker 0 writes its own: the workers' backups are then one epoch apart.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_gmix as kg  # noqa: E402
from keras_gmix import distribute  # noqa: E402

GLOBAL_BATCH = 16


def make_data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 3, 64)


def make_model(method, sync):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]
    )
    model = kg.GMixModel(inner, method=method, sync_perturbation=sync, seed=1)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("method")
    parser.add_argument("sync")
    parser.add_argument("--no-workaround", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--backup")
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--die-before-commit", type=int, default=0)
    args = parser.parse_args()
    if args.no_workaround:
        distribute.keras_needs_multi_worker_workaround = lambda: False
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = make_data()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    with strategy.scope():
        model = make_model(args.method, args.sync == "1")
    callbacks = []
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    if args.die_before_commit and task == 1:
        # Before the backup in the list: Keras calls callbacks in order.
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: epoch + 1 == args.die_before_commit and os._exit(3)
            )
        )
    if args.backup:
        # One folder per worker, as on separate machines: BackupAndRestore
        # does not coordinate workers that share a folder.
        callbacks.append(kg.checkpoint.BackupAndRestore(os.path.join(args.backup, f"worker{task}")))
    if args.step_seconds:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_train_batch_end=lambda batch, logs: time.sleep(args.step_seconds)
            )
        )
    epochs_run = []
    callbacks.append(
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    )
    history = model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=callbacks)
    history.history["epochs_run"] = epochs_run
    np.savez(
        args.output, *[w.numpy() for w in model.inner.weights], history=json.dumps(history.history)
    )


if __name__ == "__main__":
    main()
