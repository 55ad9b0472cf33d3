"""JAX: `jax.vjp` as the pull-back, `jax.random`'s stateless bits, one
global batch (keras.distribution), Keras' stateless `train_step(state, data)`.

Under `keras.distribution.DataParallel` the step sees the global batch as
one array: eps, the partition, the mixing permutation and BatchNorm
statistics are over the global batch (TensorFlow's `sync_perturbation=True`
semantics), and there is one "replica".
"""

import functools

import jax
import keras
import numpy as np

from keras_gmix import compat, step_guards

# jax.random's default pseudo-random bit generator (keys of two uint32).
RNG_ALG = "threefry2x32"

# The wrapper's step counters: JAX has no int64 unless x64 is enabled, and
# 2**31 steps are not reached.
COUNTER_DTYPE = "int32"


def vjp(fn, primals):
    """`(outputs, pullback, aux)` for `outputs, aux = fn(primals)`, as on
    TensorFlow: `pullback(cotangents)` (None for an output that is not
    differentiated) gives gradients aligned with `primals`, zeros for a
    primal no output reaches, and may be called several times."""
    outputs, pull, aux = jax.vjp(fn, primals, has_aux=True)

    def pullback(cotangents):
        filled = tuple(
            jax.numpy.zeros_like(o) if c is None else jax.numpy.asarray(c, o.dtype)
            for o, c in zip(outputs, cotangents)
        )
        (grads,) = pull(filled)
        return list(grads)

    return outputs, pullback, aux


def value_and_grad(fn, primal):
    """`(fn(primal), gradient of fn at primal)` for a scalar-valued `fn` of one
    array (a zero gradient where `fn` does not depend on `primal`)."""
    return jax.value_and_grad(fn)(primal)


def hvp(fn, primal, tangent):
    """The Hessian-vector product `H tangent` of a scalar-valued `fn` at
    `primal` (one array): exact, forward-over-reverse (the directional
    derivative of `jax.grad(fn)` along `tangent`, one JVP of the gradient)."""
    tangent = jax.numpy.asarray(tangent, jax.numpy.result_type(primal))
    _, product = jax.jvp(jax.grad(fn), (primal,), (tangent,))
    return product


def after(values, dependencies):
    """`values`, computed only after `dependencies`: an optimization barrier
    over both, without which XLA would merge a pass run again on the same
    values with the first one (common subexpressions) and keep its
    activations alive in between."""
    values, _ = jax.lax.optimization_barrier((list(values), dependencies))
    return list(values)


def _raise_unless(holds, message):
    if not bool(holds):
        raise ValueError(message)


def checked(value, conditions):
    """`value`, with every `(condition, message)` checked on the host as the
    step runs: a jitted step cannot branch on data, so a host callback raises
    (fit fails with a JaxRuntimeError that quotes the ValueError)."""
    for condition, message in conditions:
        jax.debug.callback(functools.partial(_raise_unless, message=message), condition)
    return value


JIT_GRADIENTS = (
    "`jit_gradients=True` compiles the gradient computation of a TensorFlow step "
    "with XLA; on JAX, fit compiles the whole step with XLA already. Leave "
    "`jit_gradients=False` (the default) on JAX."
)


def check_settings(scheduled, sync_perturbation, jit_gradients):
    """Refuses the GMixModel settings that have no meaning on JAX."""
    del scheduled, sync_perturbation  # any schedule runs in the one global step
    if jit_gradients:
        raise ValueError(JIT_GRADIENTS)


def check_distribution(sync_perturbation):
    """Refuses per-replica perturbation under a keras.distribution over
    several devices: the step sees one global batch there."""
    distribution = keras.distribution.distribution()
    if distribution is None or sync_perturbation:
        return
    devices = np.asarray(distribution.device_mesh.devices).size
    if devices > 1:
        raise ValueError(
            f"On JAX, `keras.distribution` runs the step on {devices} devices with the "
            "batch as one global array: eps, the sharp/flat partition and BatchNorm "
            "statistics are over the global batch, which is what `sync_perturbation=True` "
            "means on TensorFlow. Per-replica perturbation (`sync_perturbation=False`, "
            "the default, MirroredStrategy's) does not exist there: build the model with "
            "`sync_perturbation=True`."
        )


def _key(seed):
    data = jax.lax.bitcast_convert_type(jax.numpy.asarray(seed, "int32").reshape([2]), "uint32")
    return jax.random.wrap_key_data(data, impl=RNG_ALG)


def _seed(key):
    return jax.lax.bitcast_convert_type(jax.random.key_data(key), "int32")


def is_symbolic(value):
    """Whether `value` is traced (inside jit or a transformation), not a value."""
    return isinstance(value, jax.core.Tracer)


def random_bits(shape, seed):
    """Stateless uniform random uint32 bits of `shape` from an int32 [2] seed."""
    return jax.random.bits(_key(seed), tuple(shape), "uint32")


def split_seed(seed, num):
    """`num` independent int32 [2] seeds derived from one."""
    return list(_seed(jax.random.split(_key(seed), num)))


def fold_in(seed, data):
    """A new int32 [2] seed from `seed` and an integer `data`."""
    return _seed(jax.random.fold_in(_key(seed), jax.numpy.asarray(data, "uint32")))


def unseeded():
    """A fresh int32 [2] seed from NumPy's global generator."""
    return jax.numpy.asarray(np.random.randint(0, 2**31 - 1, size=2), "int32")


def num_replicas():
    return 1


def replica_id():
    return jax.numpy.zeros([], "int32")


def mean_over_replicas(tensors):
    return tensors


# The `--distribute` strategies of a training run: tf.distribute's do not
# drive a JAX step (keras.distribution does, with one global batch).
STRATEGIES = ("none",)


def model_strategy(model):
    """None: no tf.distribute strategy; a JAX run is one process's."""
    del model
    return None


def all_replicas_true(flag):
    return flag


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply(grads, variables)`, through its `stateless_apply`:
    Keras' JAX optimizers branch with `ops.cond` (LossScaleOptimizer's
    scale), whose branches must not assign variables inside a traced step."""
    new_variables, new_state = optimizer.stateless_apply(
        [v.value for v in optimizer.variables], grads, [v.value for v in variables]
    )
    for variable, value in zip(
        list(variables) + list(optimizer.variables), new_variables + new_state
    ):
        variable.assign(value)


def apply_if(finite, optimizer, grads, variables):
    """`apply_gradients` if `finite`; else the variables and the optimizer's
    state are put back."""
    with step_guards.restored_unless(finite, list(variables) + list(optimizer.variables)):
        apply_gradients(optimizer, grads, variables)


def _state_after(scope, variables, values):
    new = []
    for variable, value in zip(variables, values):
        current = scope.get_current_value(variable)
        new.append(value if current is None else current)
    return new


def _values_put_back_on_error(state_variables, function):
    """The per-batch `function(state, ...)`, which on an error first puts
    the values of the state it was given back into `state_variables()` (the
    variable groups of that state) before it raises.

    Keras' JAX `fit` and `evaluate` take the values out of the variables
    before the first step (`_purge_model_variables`, to save memory) and put
    them back from the steps' results. A step that fails, while it is traced
    (a loss GMixModel refuses) or while it runs (a batch with a class id out
    of range), has no result: the model would be left without weights,
    where TensorFlow leaves it as it was before the failed step. Our steps
    do not donate their state (`StepShell.make_train_function`), so it is
    still here.
    """

    def call(state, *args):
        try:
            return function(state, *args)
        except Exception:
            for variables, values in zip(state_variables(), state):
                for variable, value in zip(variables, values):
                    variable.assign(value)
            raise

    return call


class StepShell:
    """Keras' JAX trainer jits `train_step(state, data)`, a pure function of
    the state. The G-Mix step is the stateful one the TensorFlow backend
    runs, run here inside a `StatelessScope` that maps every variable to its
    value in `state`; what the step assigns is read back as the new state.
    """

    def _state_variables(self):
        return (
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        )

    def _test_state_variables(self):
        return (self.trainable_variables, self.non_trainable_variables, self.metrics_variables)

    def make_train_function(self, force=False):
        """Keras' per-batch train function around the step jitted as Keras
        jits it, but without donating the state: for a schedule, one jitted
        step per kind (full and cheap) and the kind chosen on the host
        before each call.

        Not donated: the step checks its batch as it runs (`checked`: class
        ids in range, finite sample weights), and a step that fails while
        running has consumed a donated state, leaving a model whose weights
        are deleted arrays. Kept, a failed call puts them back
        (`_values_put_back_on_error`), as TensorFlow leaves the model as it
        was before the bad batch. It costs one more copy of the state
        (weights, optimizer slots) during a step.

        One step holding both kinds in a conditional would be simpler, but
        XLA:CPU runs convolutions inside a conditional's branches about 30x
        slower than outside (jax-ml/jax#12868: measured here, the gradient
        of two convolutions 0.08 s vs 2.8 s), which made a step of
        `perturb_every=2` 20x slower than full G-Mix's. Each kind compiles
        on its first use.
        """
        if self.train_function is not None and not force:
            return
        if self.run_eagerly or not self.jit_compile:
            super().make_train_function(force=force)
        else:
            self.train_function = compat.per_batch_function_around(self, self._jitted_train_step())
        self.train_function = _values_put_back_on_error(self._state_variables, self.train_function)

    def make_test_function(self, force=False):
        """Keras' test function, jitted as Keras jits it but without
        donating the state, and putting the values back on an error, as the
        train function (`make_train_function`): a batch whose labels the
        evaluation refuses must not leave the model without weights."""
        if self.test_function is not None and not force:
            return
        if self.run_eagerly or not self.jit_compile:
            super().make_test_function(force=force)
        else:
            out_shardings = None
            if keras.distribution.distribution() is not None:
                trainable, non_trainable, _, metrics = compat.state_shardings(self)
                out_shardings = (None, (trainable, non_trainable, metrics))
            step = jax.jit(self.test_step, out_shardings=out_shardings)
            self.test_function = compat.per_batch_function_around(self, step)
        self.test_function = _values_put_back_on_error(
            self._test_state_variables, self.test_function
        )

    def _jitted_train_step(self):
        out_shardings = None
        if keras.distribution.distribution() is not None:
            out_shardings = (None, compat.state_shardings(self))

        def kind(full):
            def step(state, data):
                with self.tracing_branch(full):
                    return self.train_step(state, data)

            return jax.jit(step, out_shardings=out_shardings)

        if not self.scheduled:
            return jax.jit(self.train_step, out_shardings=out_shardings)
        kinds = {True: kind(True), False: kind(False)}

        @jax.jit
        def is_full_step(optimizer_state):
            # The in-step rule on the optimizer's step counter, read from the
            # state the step receives (so resumed runs agree), whatever the
            # counter is made of (with gradient accumulation, a quotient).
            mapping = list(zip(self.optimizer.variables, optimizer_state))
            with keras.StatelessScope(state_mapping=mapping):
                return self.is_full_step(self.optimizer.iterations)

        def train_step(state, data):
            return kinds[bool(is_full_step(state[2]))](state, data)

        return train_step

    def train_step(self, state, data):
        check_distribution(self.sync_perturbation)
        groups = self._state_variables()
        mapping = [(v, value) for vs, values in zip(groups, state) for v, value in zip(vs, values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self.gmix_train_step(data)
        return logs, tuple(_state_after(scope, vs, values) for vs, values in zip(groups, state))

    def test_step(self, state, data):
        logs, state = super().test_step(state, data)
        return self.evaluation_logs(logs), state


def xla_compiled_update(update, inner, optimizer, x, y, sample_weight):
    """TensorFlow's `jit_gradients=True`: never reached on JAX
    (`check_settings` refuses it)."""
    raise ValueError(JIT_GRADIENTS)
