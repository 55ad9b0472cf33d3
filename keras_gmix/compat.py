"""The one room for private Keras and TensorFlow names.

Everything keras_gmix needs from upstream that is not public API goes
through a function here, with a comment saying why it is needed and which
upstream issue (if any) would make it unnecessary. tests/test_compat.py
holds one canary per name: on a Keras or TensorFlow release that moved or
renamed it, the canary fails with a sentence naming what moved, instead of
`fit` failing somewhere deep inside a run. No other module of the package
touches a private upstream name (tests/test_compat.py checks that too).

Checked on Keras 3.15 and TensorFlow 2.21. TensorFlow
is imported where it is used, so that the module loads under any Keras
backend (layers.py uses it).
"""

# -- keras.Model (keras/src/trainers/trainer.py, backend/tensorflow/trainer.py)


def maybe_symbolic_build(model, owner, iterator=None, data_batch=None):
    """Keras' own `Model._maybe_symbolic_build`, as `super()` seen from class `owner`.

    GMixModel overrides this private method (the override must stay on the
    class: Keras' `fit` calls it by name) and falls back to Keras' version
    outside multi-worker training. keras-team/keras#20585: under
    MultiWorkerMirroredStrategy it reduces the first distributed batch
    eagerly with a collective op, which fails across workers.
    """
    return super(owner, model)._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def symbolic_build(model, data_batch):
    """`Model._symbolic_build`: builds metrics and optimizer from one batch's shapes.

    Used by GMixModel's multi-worker `_maybe_symbolic_build` on this
    worker's first local batch (keras-team/keras#20585, point 1).
    """
    model._symbolic_build(data_batch=data_batch)


def build_if_deferred(model, iterator=None, data_batch=None):
    """Builds `model` from one batch's shapes (`Model._symbolic_build`) where
    Keras would defer it: with no tf.distribute strategy set
    (`Model._distribute_strategy` is None), Keras' `_maybe_symbolic_build`
    leaves the build to the step's trace, where a GMixModel around a network
    built by its first batch never becomes `built` (count_params, save and
    export then fail after fit). No upstream issue; internal since Keras 3.0.
    """
    if model.built or model._distribute_strategy is not None:
        return
    model._symbolic_build(iterator=iterator, data_batch=data_batch)


def per_batch_function_around(model, step_function, xla=None):
    """Keras' per-batch train (or test) function around `step_function`, as
    the trainer's `make_train_function` builds it (`Trainer._make_function`:
    the data iterator, `steps_per_execution`, the distribution).

    The backends build it around a step that calls one of two compiled
    steps (a schedule's full and cheap ones), and on JAX around steps
    jitted without donating their state (see their `make_train_function`).
    `xla=False` (TensorFlow) builds it without XLA whatever the model's
    `jit_compile`, which Keras reads (`_jit_compile`) when it makes the
    function: the steps it calls are compiled themselves. No public hook
    for either; internal since Keras 3.0.
    """
    if xla is None or xla == model.jit_compile:
        return model._make_function(step_function)
    jit_compile = model._jit_compile
    model._jit_compile = xla
    try:
        return model._make_function(step_function)
    finally:
        model._jit_compile = jit_compile


def state_shardings(model):
    """JAX, under a `keras.distribution`: the shardings of the state the
    trainer carries (`JAXTrainer._get_state_sharding_spec`), the
    `out_shardings` of a step jitted outside Keras' `make_train_function`,
    as Keras jits its own. No upstream issue; internal since Keras 3.0.
    """
    return model._get_state_sharding_spec()


def flatten_logs_like_keras(model, logs):
    """`Model._flatten_metrics_in_order`: logs as `train_on_batch` returns them
    without `return_dict` (the loss and compiled metrics in Keras' order; a
    single value alone). GMixModel's `train_on_batch` filters its own
    statistics out first. No upstream issue; internal since Keras 3.0.
    """
    return model._flatten_metrics_in_order(logs)


def loss_tracker(model):
    """The `Mean` metric behind fit's `loss` log (`Model._loss_tracker`).

    A custom train_step that reports "loss" must update this very tracker:
    fit shows the tracker's value for a key equal to a compiled metric's
    name, whatever train_step returns for it. Keras updates it only inside `compute_loss`, which
    GMixModel does not call (its loss is per example, on mixed labels). No
    upstream issue; internal since Keras 3.0.
    """
    return model._loss_tracker


def per_output_loss_metrics(model):
    """The `Mean` metrics behind Keras' per-output losses (`<output>_loss`)
    of a model of several outputs, once its `CompileLoss` is built
    (`Model._compile_loss.metrics`), else none.

    Keras updates them only inside `compute_loss`, which GMixModel's step
    does not call; the JAX trainer builds them before the first step, so
    fit would log them as 0. No upstream issue; internal since Keras 3.0.
    """
    compile_loss = getattr(model, "_compile_loss", None)
    if compile_loss is None or not compile_loss.built:
        return []
    return list(compile_loss.metrics)


def set_initial_epoch(model, epoch):
    """Makes the next `fit` start at `epoch` (None: fit's own `initial_epoch`).

    `Model._initial_epoch` is what Keras' own BackupAndRestore sets since
    the fix of keras-team/keras#19179 (Keras 3.0 did not resume the epoch);
    a callback has no public way to move fit's starting epoch. Keras reads
    it but never clears it, so callers reset it to None at train end.
    """
    model._initial_epoch = epoch


def weights_h5_bytes(model):
    """The bytes of the `.weights.h5` file `model.save_weights` would write.

    `save_weights` takes only a path, and h5py writes it from inside the
    HDF5 library: on a full disk the write fails there, and the process
    then dies by a segmentation fault while h5py frees its objects (exit
    -11), before any Python handler runs. Built in memory (Keras' own
    `H5IOStore` over a `BytesIO`, as it does inside `.keras` archives), the
    file is then written with plain Python I/O, where a full disk is an
    OSError. No upstream issue; `saving_lib` is internal since Keras 3.0.
    """
    import io

    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(
        model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
    )
    store.close()
    return buffer.getvalue()


# -- keras.callbacks (keras/src/callbacks/tensorboard.py, csv_logger.py)


def set_tensorboard_train_step(callback, step):
    """Sets the batch counter of a `keras.callbacks.TensorBoard` (`_global_train_batch`).

    The callback counts batches from 0 in every `fit` call, so a resumed run
    would write its batch scalars over the first attempt's steps; there is
    no argument to start elsewhere. The callback increments before writing:
    pass one below the first step to write. No upstream issue; internal
    since Keras 3.0.
    """
    callback._global_train_batch = step


def csv_logger_write_header(logger):
    """Makes a `keras.callbacks.CSVLogger` write its header line (`append_header`).

    With `append=True` the logger decides once, at `on_train_begin`, whether
    the file needs a header, and never sets the flag back: a logger that
    truncates or removes its file before opening it must set it again. No
    upstream issue; `append_header` is an undocumented attribute.
    """
    logger.append_header = True


def csv_logger_set_columns(logger, columns):
    """Fixes the columns a `keras.callbacks.CSVLogger` writes (its `keys`).

    The logger takes its columns from the first epoch's logs; when that
    epoch validates and earlier ones did not (validation_freq > 1), or the
    other way round, the appended rows would not match the header kept from
    an earlier attempt. tensorflow/tensorflow#40114 (CSVLogger with
    validation_freq > 1; still the behaviour of Keras 3). `keys` is an
    undocumented attribute, reset to None by `on_train_begin`: call this
    after it.
    """
    logger.keys = list(columns)


# -- keras.Model kinds (keras/src/models/functional.py)


def is_functional(model):
    """True for a functional model (an instance of Keras' `Functional` class).

    `keras.models.clone_model` accepts a `clone_function` only for
    Sequential and functional models, and Keras exports no `Functional`
    class to test for the second. No upstream issue; internal since
    Keras 3.0.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


# -- tf.distribute


def in_multi_worker_mode(strategy):
    """`StrategyExtended._in_multi_worker_mode()`: does `strategy` span several workers?

    TensorFlow has no public way to ask; GMixModel needs it to apply its
    MultiWorkerMirroredStrategy workarounds (keras-team/keras#20585) only
    there. A strategy without the method is treated as single-worker.
    """
    method = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(method and method())


def strategy_supports_no_merge_call():
    """`tf.__internal__.distribute.strategy_supports_no_merge_call()`.

    True when the current strategy's optimizer update needs no merge_call,
    so a `tf.cond` around `optimizer.apply` may run in the replica context.
    Keras' LossScaleOptimizer asks the same question for the same reason
    (keras-team/keras#18666, fixed by keras-team/keras#18691); TensorFlow
    exposes it only under `tf.__internal__`.
    """
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


# The private names above, for tests/test_compat.py: each function here
# must have a canary there.
INTERNALS = (
    "per_batch_function_around",
    "state_shardings",
    "maybe_symbolic_build",
    "symbolic_build",
    "build_if_deferred",
    "flatten_logs_like_keras",
    "loss_tracker",
    "per_output_loss_metrics",
    "set_initial_epoch",
    "weights_h5_bytes",
    "set_tensorboard_train_step",
    "csv_logger_write_header",
    "csv_logger_set_columns",
    "is_functional",
    "in_multi_worker_mode",
    "strategy_supports_no_merge_call",
)
