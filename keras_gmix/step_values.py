"""The last training step's per-example values (lambda, s_i), kept for the histogram callbacks.

`GMixModel` records each step's mixing coefficients and sharpness-
sensitivities in two `StepValues` metrics; `callbacks.StepValuesLogger`
draws them. They are not model weights: files written while they were
(before this module) still load, through `without_old_step_values`.
"""

import keras
import numpy as np
from keras import ops

# The last step's lambda and s_i values are kept (NaN-padded) for callbacks
# that draw their histograms; a batch larger than this keeps its first ones.
STEP_VALUES_CAPACITY = 1024

# The names of the two StepValues trackers: metrics, but never logged.
STEP_VALUES_NAMES = ("last_lam", "last_sensitivity")


def without_old_step_values(store):
    """A GMixModel's own saved variables, without the step values of the old layout.

    Files written while `last_lam` and `last_sensitivity` were weights list
    the model's own variables as mix_step, last_lam, last_sensitivity,
    consecutive_skips, then the reuse direction; now they are mix_step,
    consecutive_skips, then the reuse direction. Entry "1" tells them apart:
    a vector of `STEP_VALUES_CAPACITY` floats in the old layout, the scalar
    counter in the new one. An old store is renumbered without its entries
    1 and 2 (their values describe a step long past); any other store is
    returned as it is, for Keras to check.
    """
    count = len(store.keys())
    if count < 3 or any(np.shape(store[key]) != (STEP_VALUES_CAPACITY,) for key in ("1", "2")):
        return store
    kept = [0] + list(range(3, count))
    return {str(new): store[str(old)] for new, old in enumerate(kept)}


class StepValues(keras.metrics.Metric):
    """The last training step's values of one kind (lambda or s_i), for callbacks.

    A fixed-size buffer of `STEP_VALUES_CAPACITY` floats: the step's values
    first, NaN after them. A metric rather than a weight of the model, so
    that `model.weights`, `save`, `save_weights` and checkpoints leave it out:
    it describes one step, not the state a resumed run needs.

    `reset_state` keeps the values. Keras resets the metrics at the start of
    every epoch and of every `evaluate` (also the validation inside `fit`),
    none of which is a training step: the buffer holds the last training
    step's values until the next training step replaces them, as
    `StepValuesLogger` expects at the end of a batch or an epoch. A new or
    reloaded model starts with NaN.
    """

    def __init__(self, name, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        # The same on every replica on read (the first replica's values):
        # each replica records the values of its own share of the batch.
        self.values = self.add_variable(
            shape=(STEP_VALUES_CAPACITY,),
            initializer=keras.initializers.Constant(float("nan")),
            dtype="float32",
            aggregation="only_first_replica",
            name=name,
        )

    def update_state(self, values, keep=True):
        """Stores `values` (flattened, cut to the capacity, NaN-padded) where `keep`."""
        values = ops.reshape(ops.cast(values, "float32"), [-1])[:STEP_VALUES_CAPACITY]
        padding = STEP_VALUES_CAPACITY - ops.shape(values)[0]
        padded = ops.pad(values, [[0, padding]], constant_values=float("nan"))
        self.values.assign(ops.where(keep, padded, ops.copy(self.values)))

    def result(self):
        return ops.copy(self.values)

    def reset_state(self):
        pass
