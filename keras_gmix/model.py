"""GMixModel: a keras.Model whose train_step runs a G-Mix family method.

train_step = sample_mix + apply_mix + update_gradients + optimizer.apply;
everything else (evaluate, predict, saving) is plain Keras.
"""

import inspect

import keras
import tensorflow as tf

from keras_gmix import checks
from keras_gmix import compat
from keras_gmix import distribute
from keras_gmix import gradients
from keras_gmix import losses as losses_lib
from keras_gmix import mixing

# The statistics each method adds to fit's logs (SPEC.md section 5), besides
# "loss" and the compiled metrics.
PERTURBATION_STATS = ("perturbed_loss", "sharpness", "eps_norm")
PARTITION_STATS = ("sensitive_fraction", "grad_cosine")

# The last step's lambda and s_i values are kept (NaN-padded) for callbacks
# that draw their histograms; a batch larger than this keeps its first ones.
STEP_VALUES_CAPACITY = 1024


def step_stat_names(method):
    names = []
    if method in gradients.PERTURBED_METHODS:
        names += PERTURBATION_STATS
    if method in gradients.PARTITIONED_METHODS:
        names += PARTITION_STATS
    if method == "dgmix":
        names.append("conflict")
    return tuple(names)


def labels_to_one_hot(y, num_classes):
    """Returns `(y_one_hot float32 [n, C], is_sparse)`; checks the class count.

    Integer labels, and float labels of shape [n] or [n, 1] when the model
    has more than one output unit, are class ids.
    """
    y = tf.convert_to_tensor(y)
    rank = y.shape.rank
    is_ids = y.dtype.is_integer or rank == 1 or (
        rank == 2 and y.shape[-1] == 1 and num_classes > 1
    )
    if is_ids:
        if rank not in (1, 2) or (rank == 2 and y.shape[-1] != 1):
            raise ValueError(
                "Integer class-id labels must have shape (batch,) or (batch, 1). "
                f"Received labels of shape {y.shape}."
            )
        ids = tf.cast(tf.reshape(y, [-1]), tf.int32)
        # tf.one_hot maps an out-of-range id to a zero row: training would go
        # on silently with a wrong label. Fail instead (datasets are checked
        # here, batch by batch; arrays up front in `fit`).
        in_range = tf.debugging.assert_less(
            ids, num_classes, message=f"class ids must be < {num_classes}, the model's output width"
        )
        non_negative = tf.debugging.assert_non_negative(ids, message="class ids must be >= 0")
        with tf.control_dependencies([in_range, non_negative]):
            return tf.one_hot(ids, num_classes, dtype=tf.float32), True
    if rank != 2 or y.shape[-1] != num_classes:
        raise ValueError(
            f"Labels have {y.shape[-1]} classes (shape {y.shape}) but the model "
            f"outputs {num_classes}. Give one-hot labels of shape (batch, "
            f"{num_classes}) or integer class ids of shape (batch,)."
        )
    return tf.cast(y, tf.float32), False


@keras.saving.register_keras_serializable(package="keras_gmix")
class GMixModel(keras.Model):
    """Trains a Keras model with G-Mix, Binary G-Mix, Decomposed G-Mix or a baseline.

    Wrap any built model; `compile` and `fit` as usual. Each training step
    mixes the batch (Mixup or CutMix), evaluates the model at w and at the
    worst-case nearby weights w + eps, and hands the method's gradient to the
    optimizer. `evaluate` and `predict` run the wrapped model plainly.

    Args:
        inner: a built `keras.Model` (functional, Sequential or subclassed)
            with a single output of class scores.
        method: `"erm"`, `"mixup"`, `"sam"`, `"gmix"`, `"bgmix"` or
            `"dgmix"`. Defaults to `"dgmix"`.
        rho: SAM neighbourhood radius, >= 0. Defaults to `0.05`.
        alpha: Beta(alpha, alpha) concentration of the mixing coefficient,
            > 0. Defaults to `1.0`.
        sensitive_fraction: fraction gamma of each batch that bgmix/dgmix
            treat as sharp, in [0, 1]. Defaults to `0.5`.
        adaptive: ASAM's scale-invariant perturbation. Defaults to `False`.
        eta: ASAM's offset. Defaults to `0.01`.
        mix: `"mixup"` or `"cutmix"`. Defaults to `"mixup"`.
        per_example_lam: draw one mixing coefficient per example instead of
            one per batch. Defaults to `False`.
        sync_perturbation: under tf.distribute, all-reduce the ascent
            gradient so every replica perturbs by the same eps (otherwise each
            replica uses its own, m-sharpness). Defaults to `False`.
        jit_gradients: compile the gradient computation of each step (both
            passes, the partition, the decomposition) with XLA, while the
            mixing and `optimizer.apply` stay outside. Works under
            MirroredStrategy, where `compile(jit_compile=True)` fails on
            Keras' side (keras-team/keras#19005). Not with
            `sync_perturbation`. Defaults to `False`.
        max_consecutive_skips: a step whose loss or gradient is not finite
            is skipped (weights, optimizer state and BatchNorm statistics
            unchanged; counted in the `skipped_steps` log); after this many
            skips in a row, `fit` stops with an error. Defaults to `20`.
        seed: seed of the mixing randomness. Defaults to `None` (random).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:

    >>> model = GMixModel(keras.applications.MobileNetV2(weights=None),
    ...                   method="dgmix", rho=0.05, alpha=1.0)
    >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> model.fit(x_train, y_train, epochs=10)

    References:
        - G-Mix: https://arxiv.org/abs/2308.03236
        - Mixup: https://arxiv.org/abs/1710.09412
        - SAM: https://arxiv.org/abs/2010.01412
        - ASAM: https://arxiv.org/abs/2102.11600
    """

    def __init__(
        self,
        inner,
        method="dgmix",
        rho=0.05,
        alpha=1.0,
        sensitive_fraction=0.5,
        adaptive=False,
        eta=0.01,
        mix="mixup",
        per_example_lam=False,
        sync_perturbation=False,
        jit_gradients=False,
        max_consecutive_skips=20,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(inner, keras.Model):
            raise ValueError(
                f"Argument `inner` must be a keras.Model. Received: {type(inner).__name__}"
            )
        gradients.check_update_arguments(method, rho, sensitive_fraction, eta)
        mixing.check_alpha(alpha)
        mixing.check_mix(mix)
        if jit_gradients and sync_perturbation:
            raise ValueError(
                "`jit_gradients=True` cannot be combined with "
                "`sync_perturbation=True`: the all-reduce of the ascent "
                "gradient is a synchronization point, which TensorFlow cannot "
                "place inside a nested XLA function. Use one of the two."
            )
        if not isinstance(max_consecutive_skips, int) or max_consecutive_skips < 1:
            raise ValueError(
                "Argument `max_consecutive_skips` must be an int >= 1. "
                f"Received: max_consecutive_skips={max_consecutive_skips!r}"
            )
        if inner.built and not inner.trainable_variables:
            raise ValueError(
                "Argument `inner` has no trainable weights: there is nothing "
                "for G-Mix to train. Unfreeze some layers (`layer.trainable = True`)."
            )
        self.inner = inner
        self.method = method
        self.rho = rho
        self.alpha = alpha
        self.sensitive_fraction = sensitive_fraction
        self.adaptive = adaptive
        self.eta = eta
        self.mix = mix
        self.per_example_lam = per_example_lam
        self.sync_perturbation = sync_perturbation
        self.jit_gradients = jit_gradients
        self.max_consecutive_skips = max_consecutive_skips
        self.seed = seed
        # The mixing randomness of step t is drawn from (seed, t, replica):
        # a counter saved with the weights makes a resumed run draw what an
        # uninterrupted one would, and every replica draws its own numbers.
        self._base_seed = seed if seed is not None else int(
            tf.random.uniform([], maxval=2**31 - 1, dtype=tf.int64)
        )
        self.mix_step = self._counter_variable("mix_step")
        self.last_lam = self._step_values_variable("last_lam")
        self.last_sensitivity = self._step_values_variable("last_sensitivity")
        self.consecutive_skips = self._counter_variable("consecutive_skips")
        self.skipped_steps_tracker = keras.metrics.Sum(name="skipped_steps")
        self.step_stat_trackers = [
            keras.metrics.Mean(name=name) for name in step_stat_names(method)
        ]
        if inner.built:
            self.built = True

    # Bookkeeping variables: saved with the model (so a resumed run goes on
    # counting), identical on every replica (the first replica's value wins).
    def _counter_variable(self, name):
        return self.add_weight(
            name=name, shape=(), dtype="int64", initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )

    def _step_values_variable(self, name):
        return self.add_weight(
            name=name, shape=(STEP_VALUES_CAPACITY,), dtype="float32",
            initializer=keras.initializers.Constant(float("nan")),
            trainable=False, aggregation="only_first_replica",
        )

    @staticmethod
    def _record_step_values(variable, values, keep=True):
        values = tf.reshape(tf.cast(values, tf.float32), [-1])[:STEP_VALUES_CAPACITY]
        padding = STEP_VALUES_CAPACITY - tf.shape(values)[0]
        padded = tf.pad(values, [[0, padding]], constant_values=float("nan"))
        variable.assign(tf.where(keep, padded, variable))

    # -- Keras plumbing -------------------------------------------------

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def build(self, input_shape):
        if not self.inner.built:
            self.inner.build(input_shape)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            inner=keras.saving.serialize_keras_object(self.inner),
            method=self.method,
            rho=self.rho,
            alpha=self.alpha,
            sensitive_fraction=self.sensitive_fraction,
            adaptive=self.adaptive,
            eta=self.eta,
            mix=self.mix,
            per_example_lam=self.per_example_lam,
            sync_perturbation=self.sync_perturbation,
            jit_gradients=self.jit_gradients,
            max_consecutive_skips=self.max_consecutive_skips,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects
        )
        return cls(inner, **config)

    def test_step(self, data):
        # The per-step training statistics are metrics (so that fit averages
        # and resets them per epoch), but evaluation computes none of them.
        logs = super().test_step(data)
        hidden = {tracker.name for tracker in self.step_stat_trackers} | {"skipped_steps"}
        return self._distributable_logs(
            {name: value for name, value in logs.items() if name not in hidden}
        )

    def _multi_worker_workaround(self):
        return distribute.is_multi_worker(self.distribute_strategy) and (
            distribute.keras_needs_multi_worker_workaround()
        )

    def _distributable_logs(self, logs):
        # keras-team/keras#20585, point 2 (see distribute.py).
        return distribute.logs_for_multi_worker(logs) if self._multi_worker_workaround() else logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # keras-team/keras#20585, point 1 (see distribute.py): Keras reduces
        # the first distributed batch with a collective op, eagerly, which
        # fails across workers. Building needs only shapes and dtypes: take
        # this worker's first local batch instead.
        if iterator is None or not self._multi_worker_workaround():
            return compat.maybe_symbolic_build(self, GMixModel, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = distribute.first_local_batch(next(batches), self.distribute_strategy)
            break
        with self.distribute_strategy.scope():
            compat.symbolic_build(self, data_batch)

    # -- the step ---------------------------------------------------------

    def num_classes(self, x):
        """Width of the model's output, from its static output shape."""
        if getattr(self, "_num_classes", None) is None:
            outputs = getattr(self.inner, "outputs", None)
            if outputs:
                shape = outputs[0].shape
            else:  # subclassed: trace it symbolically, once
                spec = keras.KerasTensor((None,) + tuple(x.shape[1:]), dtype=x.dtype)
                shape = self.inner.compute_output_spec(spec).shape
            checks.check_output_shape(shape)
            self._num_classes = shape[-1]
        return self._num_classes

    def mixing_seed(self, step, replica=None):
        """Stateless seed of step `step` on `replica` (default: this replica)."""
        seed = tf.stack([tf.constant(self._base_seed % 2**31, tf.int64), tf.cast(step, tf.int64)])
        seed = tf.cast(seed % (2**31 - 1), tf.int32)
        replica = distribute.replica_id() if replica is None else replica
        return tf.random.experimental.stateless_fold_in(seed, replica, alg=mixing.RNG_ALG)

    def mix_data(self, x, y, sample_weight, seed):
        """Mixes x, the one-hot y and the sample weights with one draw.

        Returns `(x_mix, y_mix, sample_weight_mix, label_lam)`.
        """
        n = tf.shape(y)[0]
        mix_seed, box_seed = mixing.split_seed(seed, 2)
        lam, perm = mixing.sample_mix(n, self.alpha, seed=mix_seed, per_example=self.per_example_lam)
        box_center = None
        if self.mix == "cutmix":
            box_center = mixing.sample_box_center(n, seed=box_seed, per_example=self.per_example_lam)
        x_mix, y_mix, label_lam = mixing.mix_batch(x, y, lam, perm, mix=self.mix, box_center=box_center)
        if sample_weight is not None:
            sw = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
            sample_weight = label_lam * sw + (1.0 - label_lam) * tf.gather(sw, perm)
        return x_mix, y_mix, sample_weight, label_lam

    def compute_update(self, x, y, sample_weight, loss_fn):
        """`gradients.compute_update` with this model's settings, optionally under XLA."""
        settings = dict(
            method=self.method,
            rho=self.rho,
            sensitive_fraction=self.sensitive_fraction,
            adaptive=self.adaptive,
            eta=self.eta,
            mean_over_replicas=distribute.mean_over_replicas if self.sync_perturbation else None,
        )
        if not self.jit_gradients:
            return gradients.compute_update(
                self.inner, x, y, loss_fn, sample_weight=sample_weight,
                scale_loss=self.optimizer.scale_loss, **settings,
            )
        # XLA compiles a pure function of tensors: the variables (and the
        # loss scale) are read outside it, because an XLA cluster that reads
        # a mirrored variable fails on another device (keras-team/keras#19005).
        weights = [tf.convert_to_tensor(v) for v in self.inner.trainable_variables]
        state = [tf.convert_to_tensor(v) for v in self.inner.non_trainable_variables]
        loss_scale = tf.convert_to_tensor(self.optimizer.scale_loss(tf.constant(1.0)))

        @tf.function(jit_compile=True, autograph=False)
        def compiled(weights, state, x, y, sample_weight, loss_scale):
            result = gradients.compute_update(
                self.inner, x, y, loss_fn, sample_weight=sample_weight,
                scale_loss=lambda loss: loss * tf.cast(loss_scale, loss.dtype),
                weights=weights, state=state, **settings,
            )
            return tuple(result)

        return gradients.StepResult(*compiled(weights, state, x, y, sample_weight, loss_scale))

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, after checking the data, and stopping on repeated non-finite steps."""
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        x = arguments.get("x")
        checks.check_inputs(x)
        if not isinstance(x, tf.data.Dataset) and x is not None:
            first = tf.nest.flatten(x)[0]
            checks.check_labels(arguments.get("y"), self.num_classes(tf.convert_to_tensor(first[:1])))
        guard = StopAfterConsecutiveSkips(self.max_consecutive_skips)
        arguments["callbacks"] = list(arguments.get("callbacks") or []) + [guard]
        return super().fit(**arguments)

    def record_step(self, result, finite, fault, x, y, y_one_hot, labels_are_ids, sample_weight):
        """Keeps a finite step's state (BatchNorm, metrics, step values), or counts a skip.

        `fault` (a skip that is not a loss-scale overflow) counts towards
        `max_consecutive_skips`; a finite step resets that count.

        Kept or dropped arithmetically, not with a tf.cond: under
        MirroredStrategy these assignments may be merge_calls, which
        TensorFlow refuses inside a replica-context cond.
        """
        keep = tf.cast(finite, tf.float32)

        def kept(new, old):
            return tf.where(finite, new, old)

        if result.sensitivity is not None:
            self._record_step_values(self.last_sensitivity, result.sensitivity, finite)
        # BatchNorm statistics (and RNG state) from the unperturbed pass only.
        for variable, value in zip(self.inner.non_trainable_variables, result.non_trainable):
            variable.assign(kept(value, variable))
        batch_size = tf.cast(tf.shape(y_one_hot)[0], tf.float32)
        compat.loss_tracker(self).update_state(kept(result.stats["loss"], 0.0), sample_weight=keep * batch_size)
        for tracker in self.step_stat_trackers:
            tracker.update_state(kept(result.stats[tracker.name], 0.0), sample_weight=keep)
        y_metric = y_one_hot
        if labels_are_ids:
            # Metrics see the labels in the format the user gave: class ids
            # stay class ids (the dominant class of a mixed label).
            y_metric = tf.reshape(tf.cast(tf.argmax(y_one_hot, axis=-1), y.dtype), tf.shape(y))
        metric_weight = keep if sample_weight is None else keep * sample_weight
        metric_weight = tf.broadcast_to(metric_weight, tf.shape(y_one_hot)[:1])
        self.compute_metrics(x, y_metric, kept(result.y_pred, tf.zeros_like(result.y_pred)), metric_weight)
        # Summed over replicas on read: each replica counts its share of the step.
        self.skipped_steps_tracker.update_state((1.0 - keep) / distribute.num_replicas())
        self.consecutive_skips.assign(
            tf.where(fault, self.consecutive_skips + 1, kept(tf.zeros_like(self.consecutive_skips), self.consecutive_skips))
        )

    def train_step(self, data):
        if self.loss is None:
            raise ValueError("GMixModel needs a loss: call `compile(loss=...)` before `fit`.")
        # The compiled loss, per example and on one-hot labels (sparse
        # cross-entropy becomes categorical). Resolved at trace time, so that
        # a model re-compiled by `load_model` needs nothing else.
        loss_fn = losses_lib.per_example_loss(self.loss)
        if not self.inner.trainable_variables:
            raise ValueError(
                "The wrapped model has no trainable weights: there is nothing to train."
            )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_one_hot, labels_are_ids = labels_to_one_hot(y, self.num_classes(x))
        if losses_lib.is_sparse_loss(self.loss) and not labels_are_ids:
            raise ValueError(
                "The compiled loss is sparse (it expects integer class ids) but "
                f"the labels have shape {y.shape}: pass class ids of shape "
                "(batch,), or compile with 'categorical_crossentropy'."
            )
        step = self.mix_step.assign_add(1)
        if self.method in gradients.MIXED_METHODS:
            x, y_one_hot, sample_weight, label_lam = self.mix_data(
                x, y_one_hot, sample_weight, self.mixing_seed(step)
            )
            self._record_step_values(self.last_lam, tf.broadcast_to(label_lam, tf.shape(y_one_hot)[:1]))

        result = self.compute_update(x, y_one_hot, sample_weight, loss_fn)
        # The optimizer all-reduces with SUM: hand it this replica's share.
        replicas = distribute.num_replicas()
        grads = result.grads if replicas == 1 else [g / replicas for g in result.grads]
        # A non-finite loss or gradient on any replica skips the whole step:
        # weights, optimizer state, BatchNorm statistics and metrics stay as
        # they were, and the skip is counted.
        finite = distribute.all_replicas_true(
            gradients.all_finite(result.grads + [result.stats["loss"]])
        )
        fault = tf.logical_not(finite)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It skips non-finite steps itself, and must see them to lower its
            # scale. Overflow at a scale > 1 is its normal business, not a
            # fault that should stop training.
            self.optimizer.apply(grads, self.inner.trainable_variables)
            fault = tf.logical_and(fault, self.optimizer.dynamic_scale <= 1.0)
        else:
            distribute.apply_if(finite, self.optimizer.apply, grads, self.inner.trainable_variables)
        self.record_step(result, finite, fault, x, y, y_one_hot, labels_are_ids, sample_weight)
        return self._distributable_logs(self.get_metrics_result())


class StopAfterConsecutiveSkips(keras.callbacks.Callback):
    """Ends `fit` with an error after `limit` skipped (non-finite) steps in a row."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def on_train_batch_end(self, batch, logs=None):
        skips = int(keras.ops.convert_to_numpy(self.model.consecutive_skips))
        if skips >= self.limit:
            self.model.stop_training = True
            raise FloatingPointError(
                f"Training stopped: the last {skips} steps all had a non-finite loss or "
                "gradient, so each was skipped and the weights are those of the last good "
                "step. Look for NaN/inf in the data, lower the learning rate, or add "
                "gradient clipping (e.g. optimizer global_clipnorm)."
            )
