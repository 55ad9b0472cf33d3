"""JAX: `jax.vjp` as the pull-back, `jax.random`'s stateless bits, one
global batch (keras.distribution), Keras' stateless `train_step(state, data)`.

Under `keras.distribution.DataParallel` the step sees the global batch as
one array: eps, the partition, the mixing permutation and BatchNorm
statistics are over the global batch (TensorFlow's `sync_perturbation=True`
semantics), and there is one "replica".
"""

import jax
import keras
import numpy as np

from keras_gmix import step_guards

__all__ = [
    "COUNTER_DTYPE",
    "RNG_ALG",
    "STRATEGIES",
    "StepShell",
    "after",
    "all_replicas_true",
    "apply_if",
    "check_settings",
    "checked",
    "fold_in",
    "hessian_vector_product",
    "is_symbolic",
    "mean_over_replicas",
    "model_strategy",
    "num_replicas",
    "random_bits",
    "replica_id",
    "split_seed",
    "unseeded",
    "value_and_gradient",
    "vjp",
]

# jax.random's default pseudo-random bit generator (keys of two uint32).
RNG_ALG = "threefry2x32"

# The wrapper's step counters: JAX has no int64 unless x64 is enabled, and
# 2**31 steps are not reached.
COUNTER_DTYPE = "int32"


def value_and_gradient(fn, x):
    """`(fn(x), d fn(x) / dx)` of a scalar function of one array."""
    return jax.value_and_grad(fn)(x)


def hessian_vector_product(fn, x, v):
    """H v, H the Hessian of the scalar `fn` at `x`: forward over reverse."""
    return jax.jvp(jax.grad(fn), (x,), (v,))[1]


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


def after(values, dependencies):
    """`values`: XLA schedules the computation as a whole."""
    del dependencies
    return list(values)


def checked(value, conditions):
    """`value`: a data-dependent check cannot stop a jitted JAX step (arrays
    are checked whole before `fit`)."""
    del conditions
    return value


def check_settings(scheduled, sync_perturbation, jit_gradients):
    """Refuses the GMixModel settings that have no meaning on JAX."""
    del scheduled, sync_perturbation  # any schedule runs in the one global step
    if jit_gradients:
        raise ValueError(
            "`jit_gradients=True` compiles the gradient computation of a TensorFlow step "
            "with XLA; on JAX, fit compiles the whole step with XLA already. Leave "
            "`jit_gradients=False` (the default) on JAX."
        )


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


def apply_if(finite, apply, grads, variables):
    """`apply(grads, variables)` (an optimizer's `apply`) if `finite`; else the
    variables and the optimizer's state are put back."""
    written = list(variables) + list(apply.__self__.variables)
    with step_guards.restored_unless(finite, written):
        apply(grads, variables)


def _state_after(scope, variables, values):
    new = []
    for variable, value in zip(variables, values):
        current = scope.get_current_value(variable)
        new.append(value if current is None else current)
    return new


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
