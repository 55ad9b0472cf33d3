"""MirroredStrategy checks over two logical CPU devices, run in a subprocess.

Logical devices must be configured before TensorFlow initializes, so
tests/test_distribute.py runs this file in a fresh interpreter; it prints one
JSON object of measured numbers, which the test asserts on.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_gmix as kg  # noqa: E402
from keras_gmix import perturb_schedule  # noqa: E402

D, C, GLOBAL_BATCH = 6, 3, 16
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, D)).astype("float32"), rng.integers(0, C, n)


def mlp(seed=0, batchnorm=False, dropout=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((D,)), keras.layers.Dense(8, activation="tanh")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(0.2))
    return keras.Sequential(layers + [keras.layers.Dense(C)])


def train(strategy, method, epochs=2, lr=0.5, batchnorm=False, dropout=False, n=64, **kwargs):
    x, y = data(n)
    with strategy.scope():
        model = kg.GMixModel(
            mlp(batchnorm=batchnorm, dropout=dropout), method=method, seed=3, **kwargs
        )
        model.compile(optimizer=keras.optimizers.SGD(lr), loss=LOSS)
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=epochs, verbose=0, shuffle=False)
    return model, history.history


def max_difference(a, b):
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def sync_sam_matches_one_device(mirrored):
    """sam + sync_perturbation on 2 replicas == sam on one device, same global batches."""
    model_2, _ = train(mirrored, "sam", sync_perturbation=True)
    model_1, _ = train(tf.distribute.OneDeviceStrategy("/cpu:0"), "sam")
    return max_difference(model_2.inner.get_weights(), model_1.inner.get_weights())


def per_replica_update_is_mean_of_halves(mirrored, method):
    """Default (per-replica eps): one step == mean of the halves' update_gradients."""
    x, y = data(GLOBAL_BATCH)
    model, history = train(mirrored, method, epochs=1, lr=1.0, n=GLOBAL_BATCH)
    reference = mlp()
    updates = []
    losses = []
    sharpness = []
    lams = [np.nan, np.nan]
    for replica in range(2):
        half = slice(replica * GLOBAL_BATCH // 2, (replica + 1) * GLOBAL_BATCH // 2)
        x_r, y_r = x[half], tf.one_hot(y[half], C)
        if method in ("mixup", "gmix", "bgmix", "dgmix"):
            seed = model.mixing_seed(tf.constant(1, tf.int64), replica=replica)
            x_r, y_r, _, lams[replica] = model.mix_data(x_r, y_r, None, seed)
        grads, stats = kg.update_gradients(reference, x_r, y_r, loss=LOSS, method=method)
        updates.append([g.numpy() for g in grads])
        losses.append(stats["loss"])
        sharpness.append(stats["sharpness"])
    expected = [w - (g0 + g1) / 2 for w, g0, g1 in zip(reference.get_weights(), *updates)]
    # The step values (metrics, not weights) read as the first replica's
    # half of the batch, NaN after it.
    half = GLOBAL_BATCH // 2
    lam = keras.ops.convert_to_numpy(model.last_lam)
    sensitivity = keras.ops.convert_to_numpy(model.last_sensitivity)
    return {
        "weights": max_difference(model.inner.get_weights(), expected),
        "logged_loss": abs(history["loss"][0] - float(np.mean(losses))),
        "last_lam": float(np.abs(lam[:half] - float(lams[0])).max()) if method != "sam" else 0.0,
        "last_lam_all_nan": bool(np.isnan(lam).all()),
        "last_sensitivity": abs(float(sensitivity[:half].mean()) - float(sharpness[0])),
        "padding_is_nan": bool(np.isnan(lam[half:]).all() and np.isnan(sensitivity[half:]).all()),
    }


def replicas_draw_different_mixes(mirrored):
    model = kg.GMixModel(mlp(), method="gmix", seed=3)

    def draw():
        seed = model.mixing_seed(tf.constant(1, tf.int64))
        lam, perm = kg.sample_mix(8, 1.0, seed=seed)
        return lam, perm

    lam, perm = mirrored.run(tf.function(draw))
    lams = [float(v) for v in mirrored.experimental_local_results(lam)]
    perms = [v.numpy().tolist() for v in mirrored.experimental_local_results(perm)]
    return {"lams": lams, "perms": perms}


def jit_gradients_match_graph(mirrored):
    """jit_gradients=True (XLA per replica) gives the graph-mode weights.

    Without dropout: Keras' Dropout draws other masks under XLA.
    """
    differences = {}
    for method in ("dgmix", "sam"):
        graph, _ = train(mirrored, method, batchnorm=True, lr=0.1)
        xla, _ = train(mirrored, method, batchnorm=True, lr=0.1, jit_gradients=True)
        differences[method] = max_difference(graph.inner.get_weights(), xla.inner.get_weights())
    return differences


def nan_on_one_replica_skips_everywhere(mirrored):
    """A NaN in the second replica's half: no replica applies that step."""
    x, y = data(GLOBAL_BATCH)
    x[GLOBAL_BATCH - 1] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    with mirrored.scope():
        model = kg.GMixModel(mlp(batchnorm=True), method="dgmix", seed=3)
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss=LOSS)
    before = [w.copy() for w in model.inner.get_weights()]
    history = model.fit(dataset, epochs=1, verbose=0)
    return {
        "skipped": history.history["skipped_steps"][0],
        "changed": max_difference(model.inner.get_weights(), before),
    }


def every_method_runs(mirrored):
    logs = {}
    for method in kg.METHODS:
        _, history = train(mirrored, method, epochs=1, batchnorm=True, dropout=True, lr=0.1)
        logs[method] = {k: v[-1] for k, v in history.items()}
    return logs


def schedule_on_replicas(mirrored):
    """Schedules (SPEC.md section 4b) under MirroredStrategy: every replica
    holds the same v, formed from the replicas' mean update u and plain
    gradient g; every replica makes the same full/cheap choice."""
    x, y = data(GLOBAL_BATCH)
    model, _ = train(
        mirrored, "dgmix", epochs=1, lr=1.0, n=GLOBAL_BATCH, perturb_every=2, reuse_scale=0.3
    )
    reference = mlp()
    updates, plains = [], []
    for replica in range(2):
        half = slice(replica * GLOBAL_BATCH // 2, (replica + 1) * GLOBAL_BATCH // 2)
        seed = model.mixing_seed(tf.constant(1, tf.int64), replica=replica)
        x_r, y_r, _, _ = model.mix_data(x[half], tf.one_hot(y[half], C), None, seed)
        updates.append(
            np.concatenate(
                [
                    g.numpy().ravel()
                    for g in kg.update_gradients(reference, x_r, y_r, loss=LOSS, method="dgmix")[0]
                ]
            )
        )
        plains.append(
            np.concatenate(
                [
                    g.numpy().ravel()
                    for g in kg.update_gradients(reference, x_r, y_r, loss=LOSS, method="mixup")[0]
                ]
            )
        )
    u, g = np.mean(updates, axis=0), np.mean(plains, axis=0)
    expected_v = u - (u @ g) / (g @ g) * g
    local_v = [
        np.concatenate(
            [
                mirrored.experimental_local_results(d.value)[replica].numpy().ravel()
                for d in model.reuse_direction
            ]
        )
        for replica in range(2)
    ]
    # The random schedule: the logged full_step of a single step is 0 or 1
    # only if both replicas chose alike; it must be the (seed, t) draw.
    with mirrored.scope():
        random_model = kg.GMixModel(
            mlp(), method="gmix", seed=3, perturb_probability=0.5, reuse_scale=0.3
        )
        random_model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    logged = [random_model.train_on_batch(x, y, return_dict=True)["full_step"] for _ in range(8)]
    drawn = [float(perturb_schedule.is_full_step(t, 3, perturb_probability=0.5)) for t in range(8)]
    return {
        "v_vs_reference": float(np.abs(local_v[0] - expected_v).max()),
        "v_between_replicas": float(np.abs(local_v[0] - local_v[1]).max()),
        "v_norm": float(np.linalg.norm(expected_v)),
        "random_logged": logged,
        "random_drawn": drawn,
    }


def late_phase_on_replicas(mirrored):
    """perturb_from under MirroredStrategy: each step's logged full_step is
    0 or 1 only if both replicas chose alike, and it must be the schedule's
    choice from the step counter (cheap before step s, the schedule after)."""
    x, y = data(GLOBAL_BATCH)
    found = {}
    for name, kwargs in (
        ("every_2_from_3", dict(perturb_every=2, perturb_from=3)),
        ("random_from_4", dict(perturb_probability=0.5, perturb_from=4)),
    ):
        with mirrored.scope():
            model = kg.GMixModel(mlp(batchnorm=True), method="dgmix", seed=3, **kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        logged = [model.train_on_batch(x, y, return_dict=True)["full_step"] for _ in range(10)]
        drawn = [float(perturb_schedule.is_full_step(t, 3, **kwargs)) for t in range(10)]
        found[name] = {"logged": logged, "drawn": drawn}
    return found


def main():
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {
        "replicas": mirrored.num_replicas_in_sync,
        "sync_sam": sync_sam_matches_one_device(mirrored),
        "per_replica": {
            m: per_replica_update_is_mean_of_halves(mirrored, m) for m in ("sam", "dgmix")
        },
        "draws": replicas_draw_different_mixes(mirrored),
        "logs": every_method_runs(mirrored),
        "jit_gradients": jit_gradients_match_graph(mirrored),
        "nan_skip": nan_on_one_replica_skips_everywhere(mirrored),
        "schedule": schedule_on_replicas(mirrored),
        "late_phase": late_phase_on_replicas(mirrored),
    }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
