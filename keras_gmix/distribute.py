"""What a G-Mix step needs from tf.distribute.

Inside `strategy.run`, each replica computes its own update from its local
batch; these helpers give it its replica id (to draw its own mixing
randomness), the replica count (to turn local means into the global mean
that the optimizer's all-reduce SUM expects) and an all-reduce for
`sync_perturbation`.
"""

import tensorflow as tf

from keras_gmix import compat


def num_replicas():
    """Replicas in sync under the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_id():
    """This replica's id as an int32 tensor (0 outside a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def mean_over_replicas(tensors):
    """All-reduce MEAN of a list of tensors across replicas (identity on one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, tensors)


# -- MultiWorkerMirroredStrategy and Keras 3's fit -----------------------------
#
# Keras 3's TensorFlow trainer fails under MultiWorkerMirroredStrategy
# (keras-team/keras#20585) at two points of keras/src/backend/tensorflow/
# trainer.py, checked on Keras 3.15:
#   1. `_maybe_symbolic_build` reduces the first distributed batch eagerly
#      with `strategy.reduce("MEAN", batch)`, which fails on its collective
#      ops ("Attempt to convert a value (PerReplica...)").
#   2. `reduce_per_replica` reduces the step's logs with
#      `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar logs.
# GMixModel works around both (see model.py) only on the Keras versions
# below, where the workaround was checked; tests/test_distribute.py fails if
# a newer Keras no longer needs it.
MULTI_WORKER_PATCHED_KERAS = ("3.15",)


def is_multi_worker(strategy=None):
    """True under a MultiWorkerMirroredStrategy that spans several workers."""
    strategy = strategy or tf.distribute.get_strategy()
    return compat.in_multi_worker_mode(strategy)


def min_over_workers(value, strategy):
    """The smallest of the integer `value` over all replicas of `strategy`, on
    every worker (a collective op: every worker must call it)."""
    local = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant([value], tf.int64)
    )
    return int(tf.reduce_min(strategy.gather(local, axis=0)))


def keras_needs_multi_worker_workaround():
    import keras

    return keras.__version__.startswith(MULTI_WORKER_PATCHED_KERAS)


def needs_multi_worker_workaround(strategy):
    """Whether fit under `strategy` needs the two workarounds below."""
    return is_multi_worker(strategy) and keras_needs_multi_worker_workaround()


def logs_for_keras(logs, strategy):
    """A step's logs as Keras' fit can reduce them under `strategy` (point 2)."""
    return logs_for_multi_worker(logs) if needs_multi_worker_workaround(strategy) else logs


def symbolic_build_from_first_local_batch(model, iterator):
    """Point 1: builds `model` (metrics, optimizer) from this worker's first
    local batch, with no collective op. Building needs only shapes and
    dtypes; Keras reduces the first distributed batch eagerly instead."""
    strategy = model.distribute_strategy
    for _, _, batches in iterator:
        data_batch = first_local_batch(next(batches), strategy)
        break
    with strategy.scope():
        compat.symbolic_build(model, data_batch)


def first_local_batch(batch, strategy):
    """The first local replica's part of a distributed batch (no collective op)."""

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)


def logs_for_multi_worker(logs):
    """Scalar logs as shape [1], so that Keras' `reduce(..., axis=0)` works."""
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def all_replicas_true(flag):
    """A boolean that is True only if `flag` is True on every replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return flag
    false_count = context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flag), tf.float32)
    )
    return tf.equal(false_count, 0.0)


def apply_if(finite, apply, *args):
    """Runs `apply(*args)` on every replica if `finite` (the same on all), else nothing.

    A `tf.cond` around `optimizer.apply` works in a replica context only
    where the strategy needs no merge_call; elsewhere (MirroredStrategy)
    the optimizer's all-reduce is a merge_call, which TensorFlow refuses
    inside a replica-context cond. There the cond runs in the cross-replica
    context, as Keras' LossScaleOptimizer does.
    """

    def skip():
        return None

    if not tf.distribute.has_strategy() or compat.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: apply(*args), skip)
        return

    def cross_replica(distribution, finite, *args):
        first = distribution.experimental_local_results(finite)[0]
        tf.cond(first, lambda: distribution.extended.call_for_each_replica(apply, args=args), skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, *args))
