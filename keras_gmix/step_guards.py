"""What a skipped step leaves unchanged.

A step whose loss or gradient is not finite (on any replica) is skipped:
weights, optimizer state, BatchNorm statistics and metrics stay as they
were. The step still runs its updates (under MirroredStrategy an update
may be a merge_call, which TensorFlow refuses inside a replica-context
tf.cond; a jitted JAX step has no data-dependent branch), so what it wrote
is put back arithmetically.
"""

import contextlib

from keras import ops


def kept_if(finite, new, old):
    """`new` where the step is finite, else `old` (elementwise select)."""
    return ops.where(finite, new, old)


@contextlib.contextmanager
def restored_unless(finite, variables):
    """Variables written inside the block are put back unless `finite`.

    Whatever a metric does with zero-weighted NaN predictions, its state is
    put back. (Reads and writes of a variable run in program order inside a
    tf.function; no explicit control dependency, which would stop Keras from
    lifting the compiled metrics' lazy variable creation.)
    """
    before = [ops.copy(v) for v in variables]
    yield
    for variable, value in zip(variables, before):
        variable.assign(kept_if(finite, ops.copy(variable), value))
