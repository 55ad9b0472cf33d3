"""How long one training step takes: wall-clock time and the process' CPU time.

benchmarks/step_time.py and recipes/time_steps.py time steps this one way:
a call of the compiled `model.train_function` on a data iterator (the call
`fit` makes per step), up to the moment its loss is read, since reading it
waits for the step to finish. The CPU time counts all the process' threads,
which other processes' load disturbs much less than the wall-clock time.
"""

import time


def timed_step(model, iterator):
    """Runs one training step of a compiled, traced model.

    Args:
        model: a Keras model whose `train_function` exists (after one `fit`
            step, or `make_train_function()`).
        iterator: an iterator over the training batches, e.g.
            `iter(dataset)` of a `tf.data.Dataset`.

    Returns:
        `(wall_seconds, cpu_seconds, loss)` of the step.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    logs = model.train_function(iterator)
    loss = float(logs["loss"])  # blocks until the step is done
    return time.perf_counter() - start, time.process_time() - cpu_start, loss
