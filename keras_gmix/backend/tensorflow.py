"""TensorFlow: a persistent tape as the pull-back, tf.random's stateless
bits, tf.distribute's replica context, Keras' stateful `train_step(data)`."""

import tensorflow as tf

from keras_gmix import compat, distribute

# One RNG algorithm everywhere: "auto_select" may pick a different one under
# XLA than in graph mode, and then jit_compile would mix differently.
RNG_ALG = "philox"

# The wrapper's step counters.
COUNTER_DTYPE = "int64"


def vjp(fn, primals):
    """`(outputs, pullback, aux)` for `outputs, aux = fn(primals)`.

    `pullback(cotangents)` returns the gradients of `sum(cotangent *
    output)` over the outputs whose cotangent is not None, aligned with
    `primals` (zeros for a primal an output does not reach). It may be
    called several times: the forward pass is kept (a persistent tape)
    until the pull-back is dropped.
    """
    tape = tf.GradientTape(persistent=True)
    with tape:
        tape.watch(primals)
        outputs, aux = fn(primals)

    def pullback(cotangents):
        pairs = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
        return tape.gradient(
            [o for o, _ in pairs],
            primals,
            output_gradients=[c for _, c in pairs],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    return outputs, pullback, aux


def value_and_grad(fn, primal):
    """`(fn(primal), gradient of fn at primal)` for a scalar-valued `fn` of one
    tensor (a zero gradient where `fn` does not depend on `primal`)."""
    with tf.GradientTape() as tape:
        tape.watch(primal)
        value = fn(primal)
    return value, tape.gradient(value, primal, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def hvp(fn, primal, tangent):
    """The Hessian-vector product `H tangent` of a scalar-valued `fn` at
    `primal` (one tensor): exact, by double backpropagation through nested
    tapes (the gradient of `<grad fn, tangent>`)."""
    with tf.GradientTape() as outer:
        outer.watch(primal)
        with tf.GradientTape() as inner:
            inner.watch(primal)
            value = fn(primal)
        gradient = inner.gradient(value, primal, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        directional = tf.reduce_sum(gradient * tangent)
    return outer.gradient(directional, primal, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def after(values, dependencies):
    """`values`, computed only after `dependencies`: in a graph nothing else
    orders two independent computations (and both would be held at once)."""
    with tf.control_dependencies(tf.nest.flatten(dependencies)):
        return [tf.identity(v) for v in values]


def checked(value, conditions):
    """`value`, once every `(condition, message)` holds (an error otherwise,
    raised when the step runs)."""
    asserts = [tf.debugging.Assert(condition, [message]) for condition, message in conditions]
    with tf.control_dependencies(asserts):
        return tf.identity(value)


def is_symbolic(value):
    """Whether `value` is a graph tensor (inside a tf.function), not a value."""
    return tf.is_tensor(value) and not tf.executing_eagerly()


def check_settings(scheduled, sync_perturbation, jit_gradients):
    """Refuses the GMixModel settings that tf.distribute or XLA cannot run."""
    if scheduled and sync_perturbation:
        raise ValueError(
            "`sync_perturbation=True` cannot be combined with a schedule "
            "(`perturb_every > 1`, `perturb_probability < 1` or `perturb_from > 0`): "
            "the all-reduce of the ascent gradient would sit inside the branch of full steps, "
            "where tf.distribute cannot synchronize replicas. Use one of the two."
        )
    if jit_gradients and sync_perturbation:
        raise ValueError(
            "`jit_gradients=True` cannot be combined with "
            "`sync_perturbation=True`: the all-reduce of the ascent "
            "gradient is a synchronization point, which TensorFlow cannot "
            "place inside a nested XLA function. Use one of the two."
        )


def random_bits(shape, seed):
    """Stateless uniform random uint32 bits of `shape` from an int32 [2] seed."""
    bits = tf.random.stateless_uniform(
        shape, seed, minval=None, maxval=None, dtype=tf.int32, alg=RNG_ALG
    )
    return tf.bitcast(bits, tf.uint32)


def split_seed(seed, num):
    """`num` independent int32 [2] seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num, alg=RNG_ALG))


def fold_in(seed, data):
    """A new int32 [2] seed from `seed` and an integer `data`."""
    return tf.random.experimental.stateless_fold_in(seed, data, alg=RNG_ALG)


def unseeded():
    """A fresh int32 [2] seed (reproducible only under `tf.random.set_seed`)."""
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)


num_replicas = distribute.num_replicas
replica_id = distribute.replica_id
mean_over_replicas = distribute.mean_over_replicas
all_replicas_true = distribute.all_replicas_true


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply(grads, variables)`."""
    optimizer.apply(grads, variables)


def apply_if(finite, optimizer, grads, variables):
    """`optimizer.apply(grads, variables)` on every replica if `finite`."""
    distribute.apply_if(finite, optimizer.apply, grads, variables)


# The `--distribute` strategies of a training run (tf.distribute's).
STRATEGIES = ("none", "mirrored", "multiworker")


def model_strategy(model):
    """The tf.distribute strategy `model` was built under (checkpoints ask it
    whether the run spans several workers)."""
    return model.distribute_strategy


def xla_compiled_update(update, inner, optimizer, x, y, sample_weight):
    """The fields of `update(x, y, sample_weight, weights, state, scale_loss)`
    (a `StepResult`), compiled by XLA on its own (`jit_gradients=True`).

    XLA compiles a pure function of tensors: the variables (and the loss
    scale) are read outside it, because an XLA cluster that reads a mirrored
    variable fails on another device (keras-team/keras#19005).
    """
    weights = [tf.convert_to_tensor(v) for v in inner.trainable_variables]
    state = [tf.convert_to_tensor(v) for v in inner.non_trainable_variables]
    loss_scale = tf.convert_to_tensor(optimizer.scale_loss(tf.constant(1.0)))

    @tf.function(jit_compile=True, autograph=False)
    def compiled(weights, state, x, y, sample_weight, loss_scale):
        def scale_loss(loss):
            return loss * tf.cast(loss_scale, loss.dtype)

        return tuple(update(x, y, sample_weight, weights, state, scale_loss))

    return compiled(weights, state, x, y, sample_weight, loss_scale)


class StepShell:
    """Keras' TensorFlow trainer calls the step with the batch alone, and the
    step reads and writes the variables themselves."""

    def make_train_function(self, force=False):
        """Keras' train function; with `jit_compile` and a schedule, one
        XLA-compiled step per kind (full and cheap), called from a graph-mode
        conditional on the step counter. XLA:CPU runs convolutions inside an
        XLA conditional ~30x slower (jax-ml/jax#12868; here 20-35x on a small
        CNN), so the conditional stays outside XLA."""
        if self.train_function is not None and not force:
            return self.train_function
        if not self.scheduled or self.run_eagerly or not self.jit_compile:
            return super().make_train_function(force=force)

        def kind(full):
            def step(data):
                with self.tracing_branch(full):
                    return self.train_step(data)

            return tf.function(step, jit_compile=True, reduce_retracing=True)

        full_step, cheap_step = kind(True), kind(False)

        def train_step(data):
            return tf.cond(
                self.is_full_step(self.optimizer.iterations),
                lambda: full_step(data),
                lambda: cheap_step(data),
            )

        # Keras compiles its per-batch function with XLA when `jit_compile`:
        # not this one, which only chooses the compiled step to call.
        self.train_function = compat.per_batch_function_around(self, train_step, xla=False)
        return self.train_function

    def train_step(self, data):
        return self._distributable_logs(self.gmix_train_step(data))

    def test_step(self, data):
        return self._distributable_logs(self.evaluation_logs(super().test_step(data)))

    def _distributable_logs(self, logs):
        return distribute.logs_for_keras(logs, self.distribute_strategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' fit calls this private method by name, so the override stays
        # on the class; the multi-worker workaround itself lives in
        # distribute.py. A network built by its first batch: build the
        # wrapper from that batch now, not in the step's trace (where it
        # would never become `built`).
        compat.build_if_deferred(self, iterator=iterator, data_batch=data_batch)
        if iterator is None or not distribute.needs_multi_worker_workaround(
            self.distribute_strategy
        ):
            return compat.maybe_symbolic_build(
                self, StepShell, iterator=iterator, data_batch=data_batch
            )
        distribute.symbolic_build_from_first_local_batch(self, iterator)
