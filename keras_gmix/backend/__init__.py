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

import keras

BACKENDS = ("tensorflow", "jax")

NAME = keras.backend.backend()

if NAME == "tensorflow":
    from keras_gmix.backend.tensorflow import *  # noqa: F403
    from keras_gmix.backend.tensorflow import __all__  # noqa: F401
elif NAME == "jax":
    from keras_gmix.backend.jax import *  # noqa: F403
    from keras_gmix.backend.jax import __all__  # noqa: F401
else:
    raise ImportError(
        f"keras_gmix runs on Keras' {' and '.join(BACKENDS)} backends; this Keras uses "
        f"{NAME!r}. Set KERAS_BACKEND=tensorflow (the default) or KERAS_BACKEND=jax "
        "before Keras is first imported."
    )
