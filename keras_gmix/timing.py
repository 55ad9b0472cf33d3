"""How long one training step takes: wall-clock time and the process' CPU time.

benchmarks/step_time.py and recipes/time_steps.py time steps this one way:
a call of the compiled train function on a data iterator (the call `fit`
makes per step), up to the moment its loss is read, since reading it waits
for the step to finish. The CPU time counts all the process' threads,
which other processes' load disturbs much less than the wall-clock time.

Keras' TensorFlow trainer keeps the training state in the variables and
calls `model.train_function(iterator)`; its JAX trainer is stateless and
calls `train_function(state, iterator)`, which returns the new state.
`TrainSteps` makes the calls of both alike.
"""

import time

import keras


class TrainSteps:
    """A compiled model's per-step call, as `fit` makes it, on either backend.

    On TensorFlow each call is `model.train_function(iterator)`. On JAX the
    state (trainable, non-trainable, optimizer and metrics values) is read
    from the variables once and carried from call to call, as `fit` does;
    the jitted step donates it, so the variables' own buffers are no longer
    valid until `sync` writes the state back.

    Args:
        model: a compiled Keras model after its first `fit` step (which
            builds it and makes its train function).

    Example:

    ```python
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
    steps = TrainSteps(model)
    wall, cpu, loss = timed_step(steps, iter(dataset))
    steps.sync()
    ```
    """

    def __init__(self, model):
        model.make_train_function()
        self.model = model
        self.state = None
        if keras.backend.backend() == "jax":
            self.state = tuple([v.value for v in variables] for variables in self._variables())

    def _variables(self):
        model = self.model
        return (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )

    def train_function(self, iterator):
        """Runs one step on the next batch of `iterator`; returns its logs."""
        if self.state is None:
            return self.model.train_function(iterator)
        logs, self.state = self.model.train_function(self.state, iterator)
        return logs

    def sync(self):
        """Writes the carried state back into the model's variables (JAX)."""
        if self.state is None:
            return
        for variables, values in zip(self._variables(), self.state):
            for variable, value in zip(variables, values):
                variable.assign(value)


def timed_step(model, iterator):
    """Runs one training step of a compiled, traced model.

    Args:
        model: a `TrainSteps`, or on TensorFlow a Keras model whose
            `train_function` exists (after one `fit` step, or
            `make_train_function()`).
        iterator: an iterator over the training batches, e.g.
            `iter(dataset)` of a `tf.data.Dataset` on TensorFlow, or
            `dataset.as_numpy_iterator()` on JAX.

    Returns:
        `(wall_seconds, cpu_seconds, loss)` of the step.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    logs = model.train_function(iterator)
    # Blocks until the step is done: on JAX, one compiled computation
    # whose outputs (the loss and the new state) are ready together.
    loss = float(logs["loss"])
    return time.perf_counter() - start, time.process_time() - cpu_start, loss
