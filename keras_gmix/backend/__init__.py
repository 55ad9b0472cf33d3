"""What differs between Keras 3's backends, one module per backend.

The G-Mix arithmetic (mixing, perturbation, partition, decomposition,
schedules, labels) is written once in `keras.ops`; what cannot be is here,
as Keras keeps its own in `keras/src/backend/`:

- the pull-back: one forward pass whose per-example losses are
  differentiated several times (a persistent `tf.GradientTape` on
  TensorFlow, `jax.vjp` on JAX);
- the stateless random bits the mixing draws are built from;
- the replica context of a distributed step (tf.distribute on TensorFlow;
  on JAX the batch is one global array, so there is one "replica");
- the shell of the training step (Keras' TensorFlow trainer calls a
  stateful `train_step(data)`, its JAX trainer a stateless
  `train_step(state, data)`).

A torch backend later is one more module with the same names.
"""

import importlib

import keras

BACKENDS = ("tensorflow", "jax")

# What every backend module provides (a new backend is one more module with
# these names).
INTERFACE = (
    "COUNTER_DTYPE",  # dtype of the wrapper's step counters
    "RNG_ALG",  # the stateless random-bit generator's name
    "STRATEGIES",  # the `--distribute` choices of a training run
    "StepShell",  # train_step/test_step as the backend's trainer calls them
    "after",  # values computed only after others (ordering in a graph)
    "all_replicas_true",
    "apply_gradients",  # optimizer.apply as a step may call it
    "apply_if",  # ... only if the step is finite
    "check_settings",  # GMixModel settings the backend cannot run
    "checked",  # a value, after data checks that stop the step
    "fold_in",
    "hvp",  # Hessian-vector product of a scalar function (flatness)
    "is_symbolic",
    "mean_over_replicas",
    "model_strategy",  # the tf.distribute strategy a model was built under, if any
    "num_replicas",
    "random_bits",
    "replica_id",
    "split_seed",
    "unseeded",
    "value_and_grad",  # a scalar function's value and gradient (flatness)
    "vjp",  # the pull-back: one forward pass, several gradients
    "xla_compiled_update",  # jit_gradients=True (TensorFlow only)
)

NAME = keras.backend.backend()

if NAME not in BACKENDS:
    raise ImportError(
        f"keras_gmix runs on Keras' {' and '.join(BACKENDS)} backends; this Keras uses "
        f"{NAME!r}. Set KERAS_BACKEND=tensorflow (the default) or KERAS_BACKEND=jax "
        "before Keras is first imported."
    )

_module = importlib.import_module(f"keras_gmix.backend.{NAME}")
globals().update({name: getattr(_module, name) for name in INTERFACE})
