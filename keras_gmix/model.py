"""GMixModel: a keras.Model whose train_step runs a G-Mix family method.

train_step = sample_mix + apply_mix + update_gradients + optimizer.apply;
everything else (evaluate, predict, saving) is plain Keras.
"""

import contextlib
import inspect
import warnings

import keras
import numpy as np
from keras import ops

from keras_gmix import (
    backend,
    callbacks,
    checks,
    compat,
    gradients,
    mixing,
    perturb_schedule,
    step_guards,
)
from keras_gmix import labels as labels_lib
from keras_gmix import losses as losses_lib
from keras_gmix.step_values import STEP_VALUES_NAMES, StepValues, without_old_step_values

# The statistics each method adds to fit's logs (SPEC.md section 5), besides
# "loss" and the compiled metrics.
PERTURBATION_STATS = ("perturbed_loss", "sharpness", "eps_norm")
PARTITION_STATS = ("sensitive_fraction", "grad_cosine")

NO_LABELS = (
    "The training data yields inputs without labels: GMixModel mixes each example's "
    "label with its partner's, so it needs (x, y) or (x, y, sample_weight) batches. "
    "Add the labels to the data (e.g. `dataset.map(lambda x: (x, label_of(x)))`)."
)

SOFT_LABELS = (
    "The labels arrive soft (values strictly between 0 and 1) and method={method!r} "
    "mixes them again: if the input pipeline already mixes (Keras' MixUp or CutMix "
    "layers), every example is mixed twice. Use method='sam' there (the same "
    "perturbation, no second mix), or drop the pipeline's mixing. Soft labels from "
    "label smoothing are mixed once; then this warning does not apply."
)

# The constructor's settings, read-only once the model exists.
SETTINGS = (
    "inner",
    "method",
    "rho",
    "alpha",
    "sensitive_fraction",
    "adaptive",
    "eta",
    "mix",
    "per_example_lam",
    "sync_perturbation",
    "jit_gradients",
    "max_consecutive_skips",
    "seed",
    "perturb_every",
    "reuse_scale",
    "perturb_probability",
    "perturb_from",
    "keep_first_pass",
)


def step_stat_names(method):
    names = []
    if method in gradients.PERTURBED_METHODS:
        names += PERTURBATION_STATS
    if method in gradients.PARTITIONED_METHODS:
        names += PARTITION_STATS
    if method == "dgmix":
        names.append("conflict")
    return tuple(names)


@keras.saving.register_keras_serializable(package="keras_gmix")
class GMixModel(backend.StepShell, keras.Model):
    """Trains a Keras model with G-Mix, Binary G-Mix, Decomposed G-Mix or a baseline.

    Wrap any built model; `compile` and `fit` as usual. Each training step
    mixes the batch (Mixup or CutMix), evaluates the model at w and at the
    worst-case nearby weights w + eps, and hands the method's gradient to the
    optimizer. `evaluate` and `predict` run the wrapped model plainly.
    Runs on Keras' TensorFlow and JAX backends (README, "Backends").

    Args:
        inner: a `keras.Model` (functional, Sequential or subclassed) with
            one or several outputs of class scores, shape (batch, classes);
            a one-unit output is a binary classifier (sigmoid or logit,
            labels 0/1 or probabilities). Several inputs are mixed alike.
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
            replica uses its own, m-sharpness). On JAX the step sees the
            global batch, which is this; a `keras.distribution` over several
            devices requires `True`. Defaults to `False`.
        jit_gradients: compile the gradient computation of each step (both
            passes, the partition, the decomposition) with XLA, while the
            mixing and `optimizer.apply` stay outside. Works under
            MirroredStrategy, where `compile(jit_compile=True)` fails on
            Keras' side (keras-team/keras#19005). Not with
            `sync_perturbation`; TensorFlow only (on JAX `fit` compiles the
            whole step). Defaults to `False`.
        max_consecutive_skips: a step whose loss or gradient is not finite
            is skipped (weights, optimizer state and BatchNorm statistics
            unchanged; counted in the `skipped_steps` log); after this many
            skips in a row, `fit` stops with an error. Defaults to `20`.
        seed: seed of the mixing randomness (and of the random schedule).
            Defaults to `None` (drawn once, then kept in the config).
        perturb_every: k: a perturbed method (sam, gmix, bgmix, dgmix)
            makes its full step only when the optimizer's step counter is a
            multiple of k; the steps in between are cheap (one forward and
            one backward pass, the plain gradient on the same batch: mixup's
            step, erm's for sam). Defaults to `1`.
        reuse_scale: on a cheap step, add the part of the last full step's
            update orthogonal to its plain gradient, scaled to
            `reuse_scale * ||g||` (LookSAM). Defaults to `0.0` (off).
        perturb_probability: p: each step is full with probability p,
            drawn from (seed, step). Not with `perturb_every > 1`.
            Defaults to `1.0`.
        perturb_from: s: the late phase. Every step before the optimizer's
            step s is cheap; from s on, full steps follow `perturb_every`
            or `perturb_probability` (Zhou et al., ICLR 2025: SAM in the
            last part of training only). Defaults to `0` (from the start).
        keep_first_pass: bgmix/dgmix keep the first forward pass's tape
            through the perturbed pass, for the flat subset's gradient
            (about twice sam's working memory). `False` gives the same
            update with one more forward pass and about sam's memory.
            Defaults to `True`.
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
        perturb_every=1,
        reuse_scale=0.0,
        perturb_probability=1.0,
        perturb_from=0,
        keep_first_pass=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(inner, keras.Model):
            raise ValueError(
                f"Argument `inner` must be a keras.Model. Received: {type(inner).__name__}"
            )
        # Checked values are rebound as Python numbers: NumPy scalars are
        # accepted, and get_config stays JSON-serializable.
        rho, sensitive_fraction, eta = gradients.check_update_arguments(
            method, rho, sensitive_fraction, eta
        )
        alpha = mixing.check_alpha(alpha)
        mixing.check_mix(mix)
        adaptive, per_example_lam, sync_perturbation, jit_gradients, keep_first_pass = (
            checks.check_bool(name, value)
            for name, value in (
                ("adaptive", adaptive),
                ("per_example_lam", per_example_lam),
                ("sync_perturbation", sync_perturbation),
                ("jit_gradients", jit_gradients),
                ("keep_first_pass", keep_first_pass),
            )
        )
        max_consecutive_skips = checks.check_number(
            "max_consecutive_skips", max_consecutive_skips, low=1, integer=True
        )
        seed = checks.check_optional_number("seed", seed, low=0, integer=True)
        perturb_every, reuse_scale, perturb_probability = perturb_schedule.check_schedule(
            perturb_every, reuse_scale, perturb_probability
        )
        perturb_from = perturb_schedule.check_perturb_from(perturb_from)
        scheduled = method in gradients.PERTURBED_METHODS and perturb_schedule.has_cheap_steps(
            perturb_every, perturb_probability, perturb_from
        )
        backend.check_settings(
            scheduled=scheduled, sync_perturbation=sync_perturbation, jit_gradients=jit_gradients
        )
        if inner.built and not inner.trainable_variables:
            raise ValueError(
                "Argument `inner` has no trainable weights: there is nothing "
                "for G-Mix to train. Unfreeze some layers (`layer.trainable = True`)."
            )
        self.inner = inner
        if inner.built and len(getattr(inner, "output_names", None) or ()) > 1:
            # Keras' compile reads it: per-output metrics are named like a
            # functional model's ("cls_accuracy"), dict labels matched by name.
            self.output_names = list(inner.output_names)
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
        self.perturb_every = perturb_every
        self.reuse_scale = reuse_scale
        self.perturb_probability = perturb_probability
        self.perturb_from = perturb_from
        self.keep_first_pass = keep_first_pass
        # Whether some steps are cheap (fixed at construction: the compiled
        # step is built for one schedule).
        self.scheduled = scheduled
        # None: the step decides full or cheap as it runs. True or False: the
        # backend is tracing that kind of step alone (under XLA, whose
        # conditionals slow the convolutions inside them down; see the
        # backends' `make_train_function`).
        self.traced_branch = None
        # The mixing randomness of step t is drawn from (seed, t, replica):
        # a counter saved with the weights makes a resumed run draw what an
        # uninterrupted one would, and every replica draws its own numbers.
        self._base_seed = seed if seed is not None else int(backend.unseeded()[0])
        self.mix_step = self._counter_variable("mix_step")
        self.consecutive_skips = self._counter_variable("consecutive_skips")
        # The last step's lambda and s_i for histogram callbacks: metrics, so
        # that they are neither weights nor saved (read them as `last_lam`
        # and `last_sensitivity`).
        self.last_lam_tracker = StepValues(name="last_lam")
        self.last_sensitivity_tracker = StepValues(name="last_sensitivity")
        self.skipped_steps_tracker = keras.metrics.Sum(name="skipped_steps")
        # Skips that were failures (not loss-scale overflows), for the NaN
        # logs of an epoch that kept no step (`get_metrics_result`). Not logged.
        self.failed_steps_tracker = keras.metrics.Sum(name="failed_steps")
        self.step_stat_trackers = [
            keras.metrics.Mean(name=name) for name in step_stat_names(method)
        ]
        self.full_step_tracker = keras.metrics.Mean(name="full_step") if scheduled else None
        # Counts batches whose labels arrive soft, for the once-only warning
        # of `WarnOnSoftLabels`; a metric, not a weight: saved models keep
        # their variables. Not logged.
        self.soft_labels_tracker = (
            keras.metrics.Sum(name="soft_labels") if method in gradients.MIXED_METHODS else None
        )
        # v of SPEC.md section 4b: one slot per weight of `inner`, created
        # with them (here, or in `build`), so that fine-tuning (freezing or
        # unfreezing layers between fits) finds a slot for every variable
        # that may become trainable. `reuse_direction` reads the slots of the
        # trainable ones.
        self._reuse_slots = None
        self._reuse_trainable = None
        if inner.built:
            self._create_reuse_direction()
            self.built = True
        self._settings_frozen = True

    def __setattr__(self, name, value):
        # The compiled train step is built from these values: a change after
        # construction would be ignored without a word, so it is refused.
        if name in SETTINGS and getattr(self, "_settings_frozen", False):
            raise AttributeError(
                f"`{name}` of a GMixModel cannot be changed after construction: the "
                "compiled training step keeps the value it was built with. Build a new "
                "model around the same network instead: "
                f"`kg.GMixModel(model.inner, {name}=..., ...)`."
            )
        super().__setattr__(name, value)

    # Bookkeeping variables: saved with the model (so a resumed run goes on
    # counting), identical on every replica (the first replica's value wins).
    def _counter_variable(self, name):
        return self.add_weight(
            name=name,
            shape=(),
            dtype=backend.COUNTER_DTYPE,
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    def _create_reuse_direction(self):
        # Training state, saved and restored with the weights like the
        # optimizer's; the same on every replica (formed from all-reduced
        # gradients). Only a schedule that reuses it has it, so that the
        # saved files of every other model stay what they were.
        if not (self.scheduled and self.reuse_scale > 0) or self._reuse_slots is not None:
            return
        self._reuse_slots = [
            self.add_weight(
                name=f"reuse_direction_{i}",
                shape=variable.shape,
                dtype="float32",
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
            )
            for i, variable in enumerate(self.inner.weights)
        ]
        self._reuse_trainable = self._trainable_ids()

    def _trainable_ids(self):
        return tuple(id(v) for v in self.inner.trainable_variables)

    @property
    def reuse_direction(self):
        """The stored direction v, aligned with `inner.trainable_variables`
        (`None` without reuse)."""
        if self._reuse_slots is None:
            return None
        slot_of = {id(v): slot for v, slot in zip(self.inner.weights, self._reuse_slots)}
        return [slot_of[id(v)] for v in self.inner.trainable_variables]

    def _reset_reuse_direction_if_trainables_changed(self):
        # v is a direction in the space of the trainable weights it was formed
        # in: after layers are frozen or unfrozen it points elsewhere.
        if self._reuse_slots is None or self._reuse_trainable == self._trainable_ids():
            return
        for slot in self._reuse_slots:
            slot.assign(keras.ops.zeros(slot.shape, slot.dtype))
        self._reuse_trainable = self._trainable_ids()
        print(
            "GMixModel: the trainable weights changed since the last fit; the stored "
            "reuse direction starts again from zero."
        )

    def _bookkeeping_variables(self):
        """The wrapper's own training state: counters and the reuse direction.
        Saved with the model and its checkpoints, but not the user's weights."""
        return [self.mix_step, self.consecutive_skips] + list(self._reuse_slots or [])

    @property
    def last_lam(self):
        """The last training step's mixing coefficients, one per example, NaN-padded
        to `STEP_VALUES_CAPACITY` (all NaN before the first step of a mixing method)."""
        return self.last_lam_tracker.values

    @property
    def last_sensitivity(self):
        """The last full training step's s_i, one per example, NaN-padded like `last_lam`."""
        return self.last_sensitivity_tracker.values

    # -- Keras plumbing -------------------------------------------------

    def load_own_variables(self, store):
        # Checkpoints and .keras files written while the step values were
        # weights hold them among this model's own variables.
        super().load_own_variables(self._with_reuse_slots(without_old_step_values(store)))

    def _with_reuse_slots(self, store):
        """Files written while the reuse direction had one entry per trainable
        variable (not per weight) get their entries placed in the slots of the
        trainable weights, the other slots zero."""
        if self._reuse_slots is None:
            return store
        counters = 2
        trainable = set(self._trainable_ids())
        if len(store.keys()) != counters + len(trainable) or len(trainable) == len(
            self._reuse_slots
        ):
            return store
        stored = iter(store[str(counters + i)] for i in range(len(trainable)))
        values = {str(i): store[str(i)] for i in range(counters)}
        for i, (variable, slot) in enumerate(zip(self.inner.weights, self._reuse_slots)):
            values[str(counters + i)] = (
                next(stored) if id(variable) in trainable else np.zeros(slot.shape, "float32")
            )
        return values

    # The user's network, as Keras users reach it: the wrapper's bookkeeping
    # is training state (saved by `save_own_variables`, which reads the own
    # variables, not these properties), not the user's weights.

    @property
    def weights(self):
        """The wrapped network's weights (`inner.weights`), without the
        wrapper's counters and stored direction."""
        own = {id(v) for v in self._bookkeeping_variables()}
        return [w for w in super().weights if id(w) not in own]

    @property
    def layers(self):
        """The wrapped network's layers (`inner.layers`)."""
        return self.inner.layers

    def get_layer(self, name=None, index=None):
        """A layer of the wrapped network, by name or index (`inner.get_layer`)."""
        return self.inner.get_layer(name=name, index=index)

    @property
    def inputs(self):
        """The wrapped network's symbolic inputs (a functional or Sequential
        network with an Input); `None` for a subclassed one."""
        return getattr(self.inner, "inputs", None)

    @property
    def outputs(self):
        """The wrapped network's symbolic outputs, like `inputs`."""
        return getattr(self.inner, "outputs", None)

    def declared_inputs(self):
        """The wrapped network's symbolic inputs as a flat list (empty when
        it declares none)."""
        inputs = self.inputs if self.inner.built else None
        return keras.tree.flatten(inputs) if inputs else []

    # Functional-model attributes, answered by the wrapped network when it
    # has them (a subclassed network has none: AttributeError, as in Keras).
    input = property(lambda self: self._inner_attribute("input"))
    output = property(lambda self: self._inner_attribute("output"))
    input_shape = property(lambda self: self._inner_attribute("input_shape"))
    output_shape = property(lambda self: self._inner_attribute("output_shape"))

    def _inner_attribute(self, name):
        try:
            return getattr(self.inner, name)
        except AttributeError as error:
            # Keras' own reason (a Sequential network has no `input`; a
            # subclassed one has no shapes), said of the wrapped network.
            raise AttributeError(
                f"The wrapped network ({type(self.inner).__name__}) has no `{name}`: {error}"
            ) from None

    def compute_output_shape(self, *args, **kwargs):
        """The wrapped network's output shape (`inner.compute_output_shape`)."""
        return self.inner.compute_output_shape(*args, **kwargs)

    def summary(self, *args, **kwargs):
        """The wrapped network's summary (`inner.summary`)."""
        return self.inner.summary(*args, **kwargs)

    def load_weights(self, filepath, *args, **kwargs):
        """`keras.Model.load_weights`; a `.weights.h5` file of the bare network
        (`network.save_weights(...)`, e.g. pretrained weights) loads into the
        wrapped network, leaving the wrapper's training state as it is."""
        try:
            # A bare network's file misses the wrapper's groups, and Keras
            # warns of each before it fails: the warnings are held back,
            # and given out only when the load succeeds as GMixModel's.
            with warnings.catch_warnings(record=True) as held:
                warnings.simplefilter("always")
                result = super().load_weights(filepath, *args, **kwargs)
        except ValueError as error:
            if not str(filepath).endswith(".weights.h5"):
                raise
            try:
                return self.inner.load_weights(filepath, *args, **kwargs)
            except Exception:
                raise error from None
        for warning in held:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
        return result

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`, in the Keras format (`.keras`). The legacy
        HDF5 format (`.h5`) is refused: it cannot hold the wrapper and its
        training state (and Keras 3 keeps it for old files only)."""
        if str(filepath).lower().endswith((".h5", ".hdf5")):
            raise ValueError(
                f"GMixModel saves in the Keras format, not legacy HDF5: received {filepath!r}. "
                "Use a '.keras' path (model.save('model.keras'), loaded by "
                "keras.saving.load_model), or save the trained network alone with "
                "model.inner.save(...)."
            )
        return super().save(filepath, *args, **kwargs)

    def export(
        self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs
    ):
        """`keras.Model.export`, serving the wrapped network's predictions.

        Without `input_signature`, the signature is the inputs the model was
        trained or called on (batch axis free), or the wrapped network's
        `Input`s: also for a network built by its first batch.
        """
        if input_signature is None:
            input_signature = self._serving_signature()
        return super().export(
            filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
        )

    def _serving_signature(self):
        specs = getattr(self, "_input_specs", None)
        if specs is None and self.inputs:
            specs = self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)
        if specs is None:
            return None  # Keras infers it, or says what is missing
        return [
            keras.tree.map_structure(
                lambda t: keras.InputSpec(shape=(None,) + tuple(t.shape[1:]), dtype=t.dtype), specs
            )
        ]

    def _remember_input_specs(self, x):
        # Python state set while tracing: the structure, shapes and dtypes a
        # served model takes (`export`).
        if getattr(self, "_input_specs", None) is None:
            self._input_specs = keras.tree.map_structure(labels_lib.symbolic_spec, x)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """`keras.Model.train_on_batch`: the loss and compiled metrics, as Keras
        returns them (a float, or a list); the G-Mix statistics
        (`perturbed_loss`, `sharpness`, ...) too with `return_dict=True`."""
        logs = super().train_on_batch(
            x, y, sample_weight=sample_weight, class_weight=class_weight, return_dict=True
        )
        if return_dict:
            return logs
        gmix = set(self._gmix_log_names())
        return compat.flatten_logs_like_keras(
            self, {name: value for name, value in logs.items() if name not in gmix}
        )

    def _gmix_log_names(self):
        """The logs a step adds to Keras' loss and compiled metrics."""
        return [tracker.name for tracker in self._step_trackers()] + [
            "skipped_steps",
            "failed_steps",
            "soft_labels",
        ]

    def call(self, inputs, training=None):
        self._remember_input_specs(inputs)
        return self.inner(inputs, training=training)

    def build(self, input_shape):
        if not self.inner.built:
            # Symbolically, as Keras builds a model on its first call: a
            # Sequential without an Input learns its layers' shapes from it.
            self.inner(_specs_from_shapes(input_shape))
        self._create_reuse_direction()
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
            # The drawn seed when none was given, so that a reloaded model
            # continues the same mixing stream.
            seed=self._base_seed,
            perturb_every=self.perturb_every,
            reuse_scale=self.reuse_scale,
            perturb_probability=self.perturb_probability,
            perturb_from=self.perturb_from,
            keep_first_pass=self.keep_first_pass,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner"), custom_objects=custom_objects
        )
        return cls(inner, **config)

    def make_train_function(self, force=False):
        # Eager, before every fit and train_on_batch: `loss_weights` is read
        # from the public compile config (Keras keeps the argument itself
        # only in its private CompileLoss; serializing the config fails
        # inside the traced step).
        self._loss_weights = (self.get_compile_config() or {}).get("loss_weights")
        self._reset_reuse_direction_if_trainables_changed()
        return super().make_train_function(force=force)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' `compute_loss`, on the labels as the step's loss takes
        them (`labels.labels_for_compiled_loss`): `fit` trains class ids
        against a loss on one-hot rows, so `evaluate`, fit's validation and
        the JAX trainer's build (which computes the loss on the first batch
        before any step) take them too, and a loss the step refuses is
        refused here with the step's sentence (`step_loss`)."""
        if y is not None and x is not None:
            self.step_loss(x)
            y = labels_lib.labels_for_compiled_loss(
                y, self.output_widths(x), self.loss, self.loss_output_names(x)
            )
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def evaluation_logs(self, logs):
        """Keras' evaluation logs without the G-Mix statistics: they are
        metrics (so that fit averages and resets them per epoch), but
        evaluation computes none of them."""
        hidden = set(self._gmix_log_names())
        return {name: value for name, value in logs.items() if name not in hidden}

    # -- the step ---------------------------------------------------------

    def output_widths(self, x):
        """The width of each output (classes; 1 for a binary one), found once
        (`labels.output_widths_and_names`); `x` is a batch or its specs."""
        if getattr(self, "_output_widths", None) is None:
            self._output_widths, self._output_names = labels_lib.output_widths_and_names(
                self.inner, x
            )
        return self._output_widths

    def mixing_seed(self, step, replica=None):
        """Stateless seed of step `step` on `replica` (default: this replica)."""
        seed = mixing.step_seed(self._base_seed % 2**31, step)
        replica = backend.replica_id() if replica is None else replica
        return backend.fold_in(seed, replica)

    def mix_data(self, x, y, sample_weight, seed):
        """Mixes x, the one-hot y and the sample weights with one draw.

        Returns `(x_mix, y_mix, sample_weight_mix, label_lam)`.
        """
        n = ops.shape(keras.tree.flatten(y)[0])[0]
        mix_seed, box_seed = mixing.split_seed(seed, 2)
        lam, perm = mixing.sample_mix(
            n, self.alpha, seed=mix_seed, per_example=self.per_example_lam
        )
        box_center = None
        if self.mix == "cutmix":
            box_center = mixing.sample_box_center(
                n, seed=box_seed, per_example=self.per_example_lam
            )
        x_mix, y_mix, label_lam = mixing.mix_batch(
            x, y, lam, perm, mix=self.mix, box_center=box_center
        )
        if sample_weight is not None:
            sw = ops.cast(ops.reshape(sample_weight, [-1]), "float32")
            sample_weight = label_lam * sw + (1.0 - label_lam) * ops.take(sw, perm, axis=0)
        return x_mix, y_mix, sample_weight, label_lam

    def compute_update(
        self, x, y, sample_weight, loss_fn, reduction, method=None, with_plain_grads=False
    ):
        """`gradients.compute_update` with this model's settings, optionally under XLA.

        `reduction` is the compiled loss's. `method` defaults to the model's
        (a schedule's cheap steps pass the unperturbed one).
        """
        settings = dict(
            reduction=reduction,
            method=method or self.method,
            rho=self.rho,
            sensitive_fraction=self.sensitive_fraction,
            adaptive=self.adaptive,
            eta=self.eta,
            mean_over_replicas=backend.mean_over_replicas if self.sync_perturbation else None,
            with_plain_grads=with_plain_grads,
            keep_first_pass=self.keep_first_pass,
        )

        def update(x, y, sample_weight, weights=None, state=None, scale_loss=None):
            return gradients.compute_update(
                self.inner,
                x,
                y,
                loss_fn,
                sample_weight=sample_weight,
                scale_loss=scale_loss or self.optimizer.scale_loss,
                weights=weights,
                state=state,
                **settings,
            )

        if not self.jit_gradients:
            return update(x, y, sample_weight)
        return gradients.StepResult(
            *backend.xla_compiled_update(update, self.inner, self.optimizer, x, y, sample_weight)
        )

    def scheduled_update(self, x, y, sample_weight, loss_fn, full, reduction):
        """One step of an efficient schedule (`perturb_every`,
        `perturb_probability`, `perturb_from`): the full method if `full`,
        else the cheap step (1F + 1B), with the stored direction v added
        when `reuse_scale > 0`. `full` is a scalar bool tensor (both steps
        traced, one run), or a Python bool when the backend traces each
        step kind on its own (`traced_branch`).

        Returns `(result, plain_grads)`: a `StepResult` shaped like the full
        method's (the values only a full step computes are 0 on cheap
        steps), and the plain gradient g at w (what v is formed against).
        """
        reuse = self.reuse_direction is not None

        def full_step():
            result = self.compute_update(
                x, y, sample_weight, loss_fn, reduction, with_plain_grads=reuse
            )
            return result._replace(plain_grads=result.plain_grads if reuse else ())

        def cheap_step():
            cheap_method = "mixup" if self.method in gradients.MIXED_METHODS else "erm"
            result = self.compute_update(
                x, y, sample_weight, loss_fn, reduction, method=cheap_method
            )
            plain = result.grads
            grads = (
                perturb_schedule.reuse_update(plain, self.reuse_direction, self.reuse_scale)
                if reuse
                else plain
            )
            stats = {
                name: ops.zeros([], "float32") for name in ("loss",) + step_stat_names(self.method)
            }
            stats["loss"] = result.stats["loss"]
            return gradients.StepResult(
                grads,
                stats,
                result.y_pred,
                result.non_trainable,
                sensitivity=ops.zeros(ops.shape(keras.tree.flatten(y)[0])[:1], "float32"),
                plain_grads=plain if reuse else (),
            )

        if isinstance(full, bool):  # the branch was chosen before tracing
            result = full_step() if full else cheap_step()
        else:
            result = ops.cond(full, full_step, cheap_step)
        return result._replace(plain_grads=None), result.plain_grads

    def store_reuse_direction(self, update, plain, store):
        """v = the part of the update orthogonal to g, from the replicas' mean
        update and plain gradient (the same v on every replica); kept only
        where `store` (a finite full step)."""
        update, plain = backend.mean_over_replicas([list(update), list(plain)])
        direction = perturb_schedule.orthogonal_part(update, plain)
        for variable, value in zip(self.reuse_direction, direction):
            variable.assign(ops.where(store, value, ops.copy(variable)))

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, after checking the data, and stopping on repeated non-finite steps."""
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs).arguments
        arguments.pop("self")
        x = arguments.get("x")
        checks.check_inputs(x)
        # Arrays are checked whole before training; generators, PyDatasets
        # and tf.data batch by batch in the step (never read twice here).
        if x is not None and all(checks.is_array(leaf) for leaf in keras.tree.flatten(x)):
            specs = keras.tree.map_structure(labels_lib.symbolic_spec, x)
            widths = self.output_widths(specs)
            y = arguments.get("y")
            if self.loss is not None:
                # A loss the step refuses is refused before its labels are
                # read (its labels may be valid only for it: ignore_class).
                self.step_loss(specs)
            if y is not None:
                given = labels_lib.check_array_labels(y, widths, self._output_names, self.loss)
                output_losses = labels_lib.output_losses(self.loss, widths, self._output_names)
                if self._may_warn_soft_labels() and any(
                    labels_lib.soft_array(labels, width, loss)
                    for labels, width, loss in zip(given, widths, output_losses)
                ):
                    self.warn_soft_labels()
            checks.check_sample_weight(arguments.get("sample_weight"))
        guard = callbacks.StopAfterConsecutiveSkips(self.max_consecutive_skips)
        extra = [guard] + (
            [callbacks.WarnOnSoftLabels()] if self.soft_labels_tracker is not None else []
        )
        arguments["callbacks"] = list(arguments.get("callbacks") or []) + extra
        return super().fit(**arguments)

    def _may_warn_soft_labels(self):
        # Only a mixing method mixes twice, and only class-probability labels
        # are "soft" (a regression loss's real-valued labels are not).
        return self.soft_labels_tracker is not None and labels_lib.soft_labels_may_be_mixed(
            self.loss, self._output_names
        )

    def warn_soft_labels(self):
        """Warns once that labels arrive soft and this method mixes them again."""
        if not getattr(self, "_soft_labels_warned", False):
            self._soft_labels_warned = True
            warnings.warn(SOFT_LABELS.format(method=self.method), UserWarning, stacklevel=3)

    def _step_trackers(self):
        """The per-step statistics' trackers (and full_step with a schedule)."""
        return self.step_stat_trackers + ([self.full_step_tracker] if self.scheduled else [])

    def record_step(self, result, finite, fault, x, y_metric, sample_weight, full):
        """Keeps a finite step's state (BatchNorm, metrics, step values), or counts a skip.

        `y_metric` are the labels the compiled metrics see
        (`labels.metric_labels_like`). `fault` (a skip that is not a
        loss-scale overflow) counts towards `max_consecutive_skips`; a finite
        step resets that count. `full` (a scalar bool) says whether the step
        computed the perturbed statistics: they are averaged over full steps
        only. Kept or dropped arithmetically (`step_guards`).
        """
        if result.sensitivity is not None:
            self.last_sensitivity_tracker.update_state(
                result.sensitivity, keep=ops.logical_and(finite, full)
            )
        # BatchNorm statistics (and RNG state) from the unperturbed pass only.
        for variable, value in zip(self.inner.non_trainable_variables, result.non_trainable):
            variable.assign(step_guards.kept_if(finite, value, ops.copy(variable)))
        # Not skipped_steps, which counts the skip, nor the step values,
        # written before this point with a rule of their own.
        own = (
            self.skipped_steps_tracker,
            self.failed_steps_tracker,
            self.last_lam_tracker,
            self.last_sensitivity_tracker,
        )
        metric_variables = [
            v
            for metric in self.metrics
            if not any(metric is tracker for tracker in own)
            for v in metric.variables
        ]
        with step_guards.restored_unless(finite, metric_variables):
            self.update_step_metrics(result, finite, x, y_metric, sample_weight, full)
        # Summed over replicas on read: each replica counts its share of the step.
        skipped = 1.0 - ops.cast(finite, "float32")
        self.skipped_steps_tracker.update_state(skipped / backend.num_replicas())
        self.failed_steps_tracker.update_state(ops.cast(fault, "float32") / backend.num_replicas())
        skips = ops.copy(self.consecutive_skips)
        self.consecutive_skips.assign(
            ops.where(fault, skips + 1, step_guards.kept_if(finite, ops.zeros_like(skips), skips))
        )

    def update_step_metrics(self, result, finite, x, y_metric, sample_weight, full):
        """The loss tracker, the G-Mix statistics and the compiled metrics."""
        batch_size = ops.cast(ops.shape(keras.tree.flatten(result.y_pred)[0])[0], "float32")
        loss = step_guards.kept_if(finite, result.stats["loss"], 0.0)
        compat.loss_tracker(self).update_state(loss, sample_weight=batch_size)
        full_weight = ops.cast(full, "float32")
        for tracker in self.step_stat_trackers:
            value = step_guards.kept_if(finite, result.stats[tracker.name], 0.0)
            tracker.update_state(value, sample_weight=full_weight)
        if self.scheduled:
            self.full_step_tracker.update_state(full_weight)
        y_pred = keras.tree.map_structure(
            lambda p: step_guards.kept_if(finite, p, ops.zeros_like(p)), result.y_pred
        )
        self.compute_metrics(x, y_metric, y_pred, sample_weight)

    def gmix_train_step(self, data):
        """The G-Mix step, stateful (it reads and writes the variables); the
        backend's `StepShell.train_step` runs it as its trainer expects."""
        x, y, sample_weight = self.unpack_batch(data)
        loss_fn, reduction = self.step_loss(x)
        labels = labels_lib.prepare_labels(y, self.output_widths(x), self.loss, self._output_names)
        if self.soft_labels_tracker is not None and self._may_warn_soft_labels():
            self.soft_labels_tracker.update_state(ops.cast(labels_lib.any_soft(labels), "float32"))
        x, y_one_hot, sample_weight = self.mix_step_batch(x, labels.one_hot, sample_weight)
        result, full, plain_grads = self.update(x, y_one_hot, sample_weight, loss_fn, reduction)
        finite, fault = self.apply_update(result, full, plain_grads, reduction)
        y_metric = labels_lib.metric_labels_like(
            y, labels, y_one_hot, self.method in gradients.MIXED_METHODS, self._output_names
        )
        self.record_step(
            self.logged_like_keras(result, reduction),
            finite,
            fault,
            x,
            y_metric,
            sample_weight,
            full,
        )
        # Keras' per-output losses are not what the step trains (its loss
        # is one per-example sum over outputs, on mixed labels) and the step
        # never updates them: not logged, rather than logged as 0.
        untrained = {metric.name for metric in compat.per_output_loss_metrics(self)}
        return {k: v for k, v in self.get_metrics_result().items() if k not in untrained}

    def unpack_batch(self, data):
        """`(x, y, sample_weight)` of a batch, checked: labels present, weights finite."""
        if self.loss is None:
            raise ValueError("GMixModel needs a loss: call `compile(loss=...)` before `fit`.")
        if not self.inner.trainable_variables:
            raise ValueError(
                "The wrapped model has no trainable weights: there is nothing to train."
            )
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(NO_LABELS)
        self._remember_input_specs(x)
        if sample_weight is not None:
            sample_weight = checks.checked_sample_weight(sample_weight)
        return x, y, sample_weight

    def step_loss(self, x):
        """`(loss_fn, reduction)`: the compiled loss per example and on one-hot
        labels (sparse cross-entropy becomes categorical), summed over outputs,
        and its reduction. Resolved at trace time, so that a model re-compiled
        by `load_model` needs nothing else."""
        names = self.loss_output_names(x)
        loss_fn = losses_lib.per_example_loss(
            self.loss, names, getattr(self, "_loss_weights", None)
        )
        losses_lib.check_per_example(loss_fn, self.output_widths(x))
        return loss_fn, losses_lib.reduction_of(self.loss, names)

    def loss_output_names(self, x):
        """The output names the compiled loss is keyed by: None for a model
        of one output (its loss is not a structure)."""
        return self._output_names if len(self.output_widths(x)) > 1 else None

    def mix_step_batch(self, x, y_one_hot, sample_weight):
        """The batch this step trains on: mixed (with the step's own seed) for
        the mixing methods, as it came for erm and sam."""
        step = self.mix_step.assign_add(1)
        if self.method not in gradients.MIXED_METHODS:
            return x, y_one_hot, sample_weight
        x = mixing.blendable_inputs(x, [t.dtype for t in self.declared_inputs()])
        x, y_one_hot, sample_weight, label_lam = self.mix_data(
            x, y_one_hot, sample_weight, self.mixing_seed(step)
        )
        self.last_lam_tracker.update_state(
            ops.broadcast_to(label_lam, ops.shape(keras.tree.flatten(y_one_hot)[0])[:1])
        )
        return x, y_one_hot, sample_weight

    def update(self, x, y_one_hot, sample_weight, loss_fn, reduction):
        """`(result, full, plain_grads)`: the method's update, or with a
        schedule the full or the cheap one (`full`, a scalar bool)."""
        if not self.scheduled:
            result = self.compute_update(x, y_one_hot, sample_weight, loss_fn, reduction)
            return result, ops.convert_to_tensor(True), None
        full = self.traced_branch
        if full is None:
            full = self.is_full_step(self.optimizer.iterations)
        result, plain_grads = self.scheduled_update(
            x, y_one_hot, sample_weight, loss_fn, full, reduction
        )
        return result, ops.convert_to_tensor(full), plain_grads

    @contextlib.contextmanager
    def tracing_branch(self, full):
        """Within: the step is traced as a full step (`full=True`) or a cheap
        one, with no conditional between them (see the backends'
        `make_train_function`)."""
        self.traced_branch = full
        try:
            yield
        finally:
            self.traced_branch = None

    def is_full_step(self, step):
        """Whether optimizer step `step` of this model's schedule is a full
        step (a scalar bool tensor)."""
        return perturb_schedule.is_full_step(
            step, self._base_seed, self.perturb_every, self.perturb_probability, self.perturb_from
        )

    def apply_update(self, result, full, plain_grads, reduction):
        """Hands the update to the optimizer unless it is not finite on some
        replica (then weights and optimizer state stay as they were).

        Returns `(finite, fault)`: `fault` is a skip that should count
        towards `max_consecutive_skips`.
        """
        # The optimizer all-reduces with SUM: hand it this replica's share of
        # a mean; a sum is summed as it is.
        replicas = backend.num_replicas()
        grads = result.grads
        if replicas > 1 and losses_lib.is_mean_over_replicas(reduction):
            grads = [g / replicas for g in grads]
        finite = backend.all_replicas_true(
            gradients.all_finite(result.grads + [result.stats["loss"]])
        )
        if self.reuse_direction is not None:
            # Before the update: the optimizer advances the step counter.
            self.store_reuse_direction(result.grads, plain_grads, ops.logical_and(full, finite))
        fault = ops.logical_not(finite)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It skips non-finite steps itself, and must see them to lower its
            # scale. Overflow at a scale > 1 is its normal business, not a
            # fault that should stop training.
            backend.apply_gradients(self.optimizer, grads, self.inner.trainable_variables)
            fault = ops.logical_and(fault, self.optimizer.dynamic_scale <= 1.0)
        else:
            backend.apply_if(finite, self.optimizer, grads, self.inner.trainable_variables)
        return finite, fault

    def logged_like_keras(self, result, reduction):
        """A summed loss (reduction "sum" or None) is logged times the number
        of replicas under a strategy, as Keras logs it; a mean as it is."""
        replicas = backend.num_replicas()
        if replicas == 1 or losses_lib.is_mean_over_replicas(reduction):
            return result
        stats = {
            name: value * replicas if name in ("loss", "perturbed_loss") else value
            for name, value in result.stats.items()
        }
        return result._replace(stats=stats)

    def get_metrics_result(self):
        """Keras' metric results without the internal `soft_labels` and
        `failed_steps` counts and the step values (`last_lam`,
        `last_sensitivity`: arrays, not scalars); NaN for all but
        `skipped_steps` while the epoch has kept no step and one failed.

        Dropped here, not from the step's logs alone: at the end of an epoch
        Keras reads `get_metrics_result()` (the metrics summed over replicas)
        only when its keys equal the step's logs; otherwise it keeps the last
        step's logs, averaged over replicas, which halves a Sum such as
        `skipped_steps` on two replicas.
        """
        logs = super().get_metrics_result()
        failed = logs.pop("failed_steps", 0.0)
        for name in ("soft_labels",) + STEP_VALUES_NAMES:
            logs.pop(name, None)
        # No step of the epoch so far was kept, and one failed (not only
        # loss-scale overflows): the empty metrics would read 0 (a perfect
        # loss); NaN says what happened, as Keras' own logs do, and stops
        # TerminateOnNaN.
        tracker = compat.loss_tracker(self)
        if tracker is None:
            return logs
        diverged = ops.logical_and(tracker.count == 0, failed > 0)
        return {
            name: value if name == "skipped_steps" else ops.where(diverged, float("nan"), value)
            for name, value in logs.items()
        }


def _is_shape(value):
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _specs_from_shapes(shapes):
    """KerasTensors of the shapes Keras passes to `build` (one shape, or a list/dict of them)."""
    if _is_shape(shapes):
        return keras.KerasTensor(tuple(shapes), dtype="float32")
    if isinstance(shapes, dict):
        return {key: _specs_from_shapes(value) for key, value in shapes.items()}
    return [_specs_from_shapes(value) for value in shapes]
