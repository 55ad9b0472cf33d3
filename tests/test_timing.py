"""keras_gmix/timing.py: one compiled training step, timed in wall-clock and CPU time."""

import time

import keras
import numpy as np
import pytest

from keras_gmix.timing import TrainSteps, timed_step


class SleepingModel:
    """A train function that waits without using the CPU, then reports a loss."""

    def __init__(self, seconds):
        self.seconds = seconds

    def train_function(self, iterator):
        next(iterator)
        time.sleep(self.seconds)
        return {"loss": np.float32(1.5)}


def test_a_waiting_step_takes_wall_clock_time_and_little_cpu_time():
    wall, cpu, loss = timed_step(SleepingModel(0.2), iter(range(3)))
    assert wall >= 0.2
    assert cpu < 0.1
    assert loss == 1.5


@pytest.mark.tensorflow_only
def test_it_runs_exactly_one_step_of_a_compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 3), "float32")
    y = np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # traces the train function
    assert int(model.optimizer.iterations) == 2
    batches = iter([(x[:4], y[:4])] * 3)
    _, _, loss = timed_step(model, batches)
    assert int(model.optimizer.iterations) == 3
    assert np.isfinite(loss) and loss > 0
    assert len(list(batches)) == 2  # one batch was taken


def test_train_steps_carry_the_state_as_fit_does():
    # Runs on both backends: on JAX the state is carried from call to call
    # and written back by sync; on TensorFlow the variables are the state.
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.zeros((8, 2), "float32")

    def trained(timed_steps):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        if timed_steps:
            steps = TrainSteps(model)
            losses = [timed_step(steps, iter([(x[:4], y[:4])]))[2] for _ in range(3)]
            steps.sync()
            assert np.all(np.isfinite(losses))
        else:
            for _ in range(3):
                model.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)
        return model

    model, reference = trained(True), trained(False)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 5
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
