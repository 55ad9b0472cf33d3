"""What a G-Mix step needs from tf.distribute.

Inside `strategy.run`, each replica computes its own update from its local
batch; these helpers give it its replica id (to draw its own mixing
randomness), the replica count (to turn local means into the global mean
that the optimizer's all-reduce SUM expects) and an all-reduce for
`sync_perturbation`.
"""

import tensorflow as tf


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
