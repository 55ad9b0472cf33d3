"""A complete training run from a typed config: the library side of `gmix-train`.

`TrainConfig` holds every setting of a run; `run(config)` loads the data,
builds the model inside the distribution strategy, compiles, fits with
checkpoints that survive a kill, and writes the record of the run into its
output folder:

    config.json      the resolved config (what `--resume` and gmix-flatness read)
    history.csv      one row per epoch: fit's logs and `seconds`
    tensorboard/     TensorBoard runs: train/ and validation/ (Keras' epoch
                     and batch scalars), steps/ (learning rate, rho,
                     histograms of lambda and of the sharpness-sensitivity),
                     flatness/ (with --flatness-every)
    flatness/        FlatnessMonitor's PNGs and flatness.csv (--flatness-every)
    backup/          atomic checkpoints of the last finished epoch
                     (`checkpoint.BackupAndRestore`; removed when a run ends)
    model.keras      the trained GMixModel
    results.json     test accuracy and loss, method, epochs, seconds, ...
    .lock            locked (`fcntl.flock`) by the one process writing the
                     folder; it names that process (`records.hold_run_folder`)

A killed run continues with `resume=True` (`--resume`): the backup restores
the weights, the optimizer (its step count drives the learning-rate
schedule), GMixModel's mixing counter and the epoch, and fit continues with
the next epoch; history.csv keeps one row per finished epoch. A resume
continues the run in the folder or is refused: the folder and a readable
config.json must exist, and only `RESUMABLE_FIELDS` may differ from it. The training
pipeline's shuffling and "standard" augmentation are keyed by (seed,
epoch), so the resumed run sees the batches the uninterrupted run saw: with
`deterministic=True`, on one CPU device, with augment "none" or "standard",
it ends with the same weights, bit for bit. (Keras' RandAugment and
RandomErasing layers keep their own random state, which is not restored.)
"""

import dataclasses
import difflib
import json
import math
import os
import time
import typing
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_gmix import callbacks as callbacks_lib
from keras_gmix import checkpoint as checkpoint_lib
from keras_gmix import checks
from keras_gmix import data as data_lib
from keras_gmix import layers as layers_lib
from keras_gmix import models as models_lib
from keras_gmix import records
from keras_gmix.schedules import LinearWarmup, learning_rate_schedule  # noqa: F401  (re-exported)
from keras_gmix.gradients import METHODS
from keras_gmix.model import GMixModel

SCHEDULES = ("cosine", "step", "constant")
DISTRIBUTE = ("none", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
AUGMENT = ("auto",) + tuple(data_lib.AUGMENTATIONS)
MIXES = ("mixup", "cutmix")

# The TrainConfig fields a resumed run may change: where the data and the
# record are, and how the run is watched, not what is trained. Every other
# field, a field added later included, defines the run and must stay as the
# run began (`resume_differences`); `epochs` may only grow.
RESUMABLE_FIELDS = (
    "epochs",
    "output",
    "resume",
    "verbose",
    "data_dir",
    "download",
    "tensorboard_update_freq",
    "flatness_every",
    "flatness_examples",
)

# The allowed range of each numeric field (keywords of `checks.check_number`;
# int fields must be whole numbers). A numeric field not listed here must
# still be a finite number of its type.
NUMBER_RANGES = {
    "train_fraction": dict(low=0, low_inclusive=False, high=1),
    "train_size": dict(low=1),
    "image_size": dict(low=1),
    "epochs": dict(low=1),
    "batch_size": dict(low=1),
    "learning_rate": dict(low=0, low_inclusive=False),
    "momentum": dict(low=0, high=1),
    "weight_decay": dict(low=0),
    "warmup_epochs": dict(low=0),
    "step_gamma": dict(low=0, low_inclusive=False),
    "rho": dict(low=0),
    "alpha": dict(low=0, low_inclusive=False),
    "sensitive_fraction": dict(low=0, high=1),
    "eta": dict(low=0),
    "perturb_every": dict(low=1),
    "reuse_scale": dict(low=0),
    "perturb_probability": dict(low=0, low_inclusive=False, high=1),
    "label_smoothing": dict(low=0, high=1),
    "seed": dict(low=0, high=2**32 - 1),  # NumPy's seed range (keras.utils.set_random_seed)
    "tensorboard_update_freq": dict(low=1),
    "flatness_every": dict(low=0),
    "flatness_examples": dict(low=1),
    "verbose": dict(low=0, high=2),
}


def field_kind(field):
    """`(type, optional)` of a TrainConfig field: `Optional[float]` is `(float, True)`."""
    if typing.get_origin(field.type) is typing.Union:
        kinds = [kind for kind in typing.get_args(field.type) if kind is not type(None)]
        return kinds[0], True
    return field.type, False


def check_milestones(milestones):
    """Returns the step schedule's milestones as a tuple of floats, strictly increasing in (0, 1)."""
    values = tuple(milestones) if isinstance(milestones, (list, tuple)) else None
    try:
        values = tuple(
            checks.check_number(
                "step_milestones", m, low=0, high=1, low_inclusive=False, high_inclusive=False
            )
            for m in values
        )
        increasing = all(a < b for a, b in zip(values, values[1:]))
    except (TypeError, ValueError):
        increasing = False
    if not increasing:
        # Unsorted milestones would give a learning rate that rises again.
        raise ValueError(
            "Argument `step_milestones` must be fractions of training, strictly "
            "increasing in (0, 1), e.g. [0.5, 0.75]. Received: "
            f"step_milestones={milestones!r}"
        )
    return values


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the main job (digits, dgmix).

    Every field is a `gmix-train` flag (`train_size` is `--train-size`) and
    a key of a `--config` JSON/YAML file.
    """

    dataset: str = (
        "digits"  # cifar10, cifar100, svhn_cropped, stl10, digits, a .npz path or a folder
    )
    test_dataset: Optional[str] = None  # a folder data set's test images (else a held-out split)
    data_dir: Optional[str] = None
    download: bool = True
    train_fraction: Optional[float] = None  # class-balanced subset: the limited-data regime
    train_size: Optional[int] = None
    image_size: Optional[int] = None  # digits and folders: the side images are resized to
    # "auto": "standard" (pad-crop, flip where label-preserving) for image
    # data sets, "none" for the 8x8 digits.
    augment: str = "auto"
    model: str = "small_cnn"
    stock_batchnorm: bool = False  # Keras' BatchNormalization instead of the fused one
    method: str = "dgmix"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    # PyTorch-style coupled weight decay (the papers' 5e-4): an L2 term
    # weight_decay / 2 * ||w||^2 on kernels, evaluated at w.
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_milestones: tuple = (0.5, 0.75)  # step schedule: fractions of training
    step_gamma: float = 0.1
    rho: float = 0.05
    alpha: float = 1.0
    sensitive_fraction: float = 0.5
    adaptive: bool = False
    eta: float = 0.01
    mix: str = "mixup"
    # Efficient schedules (SPEC.md section 4b): the full perturbed step every
    # k-th step (or with probability p), a 1F+1B step in between, optionally
    # plus reuse_scale times the stored orthogonal direction.
    perturb_every: int = 1
    reuse_scale: float = 0.0
    perturb_probability: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    # TensorFlow's op determinism (process-wide, stays on): the same seed
    # gives the same weights bit for bit on one CPU device, also across
    # --resume (augment "none"/"standard"; see the module docstring).
    deterministic: bool = False
    output: Optional[str] = None
    resume: bool = False
    distribute: str = "none"
    jit: bool = False
    mixed_precision: str = "float32"
    tensorboard_update_freq: int = 10  # steps between TensorBoard batch values
    flatness_every: int = 0  # FlatnessMonitor every N epochs; 0 = off
    flatness_examples: int = 256  # held-out (test) examples it measures on
    verbose: int = 1

    def __post_init__(self):
        # Each field on its own: type, finiteness, range. A config file's
        # `adaptive: "no"` or `epochs: "ten"` stops here with the field's
        # name, and numbers become plain Python ones (NumPy scalars welcome).
        for field in dataclasses.fields(self):
            kind, optional = field_kind(field)
            value = getattr(self, field.name)
            if optional and value is None:
                continue
            if kind is bool:
                value = checks.check_bool(field.name, value)
            elif kind in (int, float):
                value = checks.check_number(
                    field.name, value, integer=kind is int, **NUMBER_RANGES.get(field.name, {})
                )
            elif field.name == "step_milestones":
                value = check_milestones(value)
            setattr(self, field.name, value)

    def validate(self):
        """Raises a ValueError naming the first bad setting (each field's own
        type and range are checked when the config is made)."""
        choices = {
            "method": METHODS,
            "schedule": SCHEDULES,
            "distribute": DISTRIBUTE,
            "mixed_precision": PRECISIONS,
            "model": models_lib.MODEL_NAMES,
            "augment": AUGMENT,
            "mix": MIXES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}. Received: {getattr(self, name)!r}"
                )
        folder = self.dataset not in data_lib.DATASET_NAMES and os.path.isdir(str(self.dataset))
        if not (
            str(self.dataset).endswith(".npz") or self.dataset in data_lib.DATASET_NAMES or folder
        ):
            raise ValueError(
                f"`dataset` must be one of {data_lib.DATASET_NAMES}, a path ending in "
                "'.npz', or an existing folder with one subfolder of images per class. "
                f"Received: {self.dataset!r}"
            )
        if self.test_dataset is not None and not (folder and os.path.isdir(self.test_dataset)):
            raise ValueError(
                "`test_dataset` must be a folder of class subfolders, and needs a folder "
                f"`dataset`. Received: dataset={self.dataset!r}, test_dataset={self.test_dataset!r}"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"`warmup_epochs` must be below `epochs` ({self.epochs}). "
                f"Received: {self.warmup_epochs!r}"
            )
        if self.resume and not self.output:
            raise ValueError("`resume` needs `output`: the folder of the run to continue.")
        if self.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
            raise ValueError(
                "`distribute='multiworker'` needs the TF_CONFIG environment "
                "variable (cluster and task of this worker); see README."
            )

    @classmethod
    def from_dict(cls, values):
        """A config from a dict (e.g. a JSON/YAML file); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {str(key).replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - fields)
        if unknown:
            hints = [
                f"{key!r} (did you mean {difflib.get_close_matches(key, fields, 1)[0]!r}?)"
                if difflib.get_close_matches(key, fields, 1)
                else repr(key)
                for key in unknown
            ]
            raise ValueError(
                f"Unknown config keys: {', '.join(hints)}. Valid keys: {sorted(fields)}"
            )
        return cls(**values)

    def to_dict(self):
        values = dataclasses.asdict(self)
        values["step_milestones"] = list(values["step_milestones"])
        return values


# One sentence per TrainConfig field: what it does, its unit or allowed
# values (gmix-train, gmix-compare and a config file's keys share them; the
# command line adds each default from TrainConfig itself).
FIELD_HELP = {
    "dataset": "Training data: a TFDS name (cifar10, cifar100, svhn_cropped, stl10), "
    "'digits' (scikit-learn, offline), a .npz file with x_train/y_train/x_test/y_test, "
    "or a folder with one subfolder of images per class.",
    "test_dataset": "Folder data sets only: a second folder of class subfolders to test on "
    "(same class names); without it a stratified fifth of the training folder "
    "is held out, always the same images.",
    "data_dir": "Directory where TensorFlow Datasets keeps (and downloads) its data.",
    "download": "Let TensorFlow Datasets download a data set that is not prepared yet.",
    "train_fraction": "Train on a class-balanced fraction in (0, 1] of the training split "
    "(the limited-data regime); the test split is never reduced.",
    "train_size": "Train on this many training examples (class-balanced); exclusive with --train-fraction.",
    "image_size": "Side length in pixels that images are resized to: digits (8x8 upsampled) and "
    "folder data sets (default there: the first image's size).",
    "augment": "Training augmentation: 'standard' pads, crops and flips (flips only where "
    "label-preserving), 'randaugment'/'erasing'/'strong' add Keras' layers, "
    "'auto' is 'none' for digits and 'standard' otherwise.",
    "model": "Architecture to train (keras_gmix.models).",
    "stock_batchnorm": "Use Keras' BatchNormalization instead of keras_gmix's fused one.",
    "method": "Training method: erm, mixup, sam, gmix, bgmix or dgmix (SPEC.md section 4).",
    "epochs": "Number of passes over the training split.",
    "batch_size": "Training examples per step (the global batch under a distribution strategy).",
    "learning_rate": "Peak learning rate of SGD (after warm-up).",
    "momentum": "SGD momentum in [0, 1].",
    "nesterov": "Use Nesterov momentum.",
    "weight_decay": "Coupled L2 weight decay on kernels (PyTorch's convention: the term "
    "weight_decay / 2 * ||w||^2), evaluated at w.",
    "schedule": "Learning-rate schedule after warm-up: cosine (to 0), step (times --step-gamma "
    "at each milestone) or constant.",
    "warmup_epochs": "Epochs of linear learning-rate warm-up from 0 (may be fractional).",
    "step_milestones": "Step schedule: fractions of training in (0, 1), increasing, where the "
    "learning rate drops.",
    "step_gamma": "Step schedule: factor the learning rate is multiplied by at each milestone.",
    "rho": "Radius of the SAM neighbourhood (>= 0; 0 turns the perturbation off).",
    "alpha": "Concentration of the Beta(alpha, alpha) mixing coefficient (> 0).",
    "sensitive_fraction": "bgmix/dgmix: fraction in [0, 1] of each batch treated as sharp.",
    "adaptive": "ASAM's scale-invariant perturbation instead of SAM's.",
    "eta": "ASAM's offset added to |w| (>= 0).",
    "mix": "How examples are mixed: mixup (blend) or cutmix (paste a box; image data only).",
    "perturb_every": "Perturbed methods: the full step every k-th optimizer step, a plain "
    "one in between (SPEC.md section 4b; integer >= 1).",
    "reuse_scale": "On the cheap steps of a schedule, add the stored orthogonal direction "
    "scaled to this times ||g|| (LookSAM; >= 0, 0 is off).",
    "perturb_probability": "Perturbed methods: probability in (0, 1] that a step is full, "
    "drawn from (seed, step); not with --perturb-every > 1.",
    "label_smoothing": "Label smoothing in [0, 1] of the cross-entropy (one-hot labels).",
    "seed": "Seed of initialization, shuffling, augmentation, mixing and subsets (0 to 2**32 - 1).",
    "deterministic": "Turn on TensorFlow's op determinism: the same seed gives the same "
    "weights bit for bit on one CPU device.",
    "output": "Folder of the run's record (config.json, history.csv, model.keras, "
    "results.json, ...); default runs/<time>.",
    "resume": "Continue the killed run in --output from its last finished epoch.",
    "distribute": "Distribution strategy: none, mirrored (the GPUs of this machine) or "
    "multiworker (needs TF_CONFIG).",
    "jit": "Compile the training step with XLA (compile(jit_compile=True)).",
    "mixed_precision": "Keras mixed-precision policy: float32, mixed_float16 (with loss "
    "scaling) or mixed_bfloat16.",
    "tensorboard_update_freq": "Steps between the TensorBoard batch values.",
    "flatness_every": "Measure flatness (FlatnessMonitor) every N epochs; 0 turns it off.",
    "flatness_examples": "Held-out (test) examples the flatness measures use.",
    "verbose": "Keras fit's verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
}


def load_config_file(path):
    """Reads a JSON or YAML config file into a dict (dashes in keys become underscores)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of settings.")
    return {key.replace("-", "_"): value for key, value in values.items()}


def _config_fix(output):
    return (
        f"without it the run's settings are unknown. Restore config.json, or "
        f"delete {output} to start over (or start a new run elsewhere without --resume)"
    )


def saved_config(output):
    """The config.json of a run folder as a dict, or None when there is none.

    Raises:
        ValueError: config.json is there but unreadable; the message names it.
    """
    path = os.path.join(output, "config.json")
    if not os.path.exists(path):
        return None
    return records.read_json(path, _config_fix(output))


def resume_values(values):
    """Settings for `--resume`: the run's saved config.json, overridden by `values`.

    So `gmix-train --resume --output DIR` alone continues a run exactly as it
    was configured. Returns `values` unchanged when there is nothing saved
    (`run` then refuses to resume).
    """
    output = values.get("output")
    saved = saved_config(output) if values.get("resume") and output else None
    if saved is None:
        return values
    merged = dict(saved)
    merged.update(values)
    return merged


def resume_differences(saved, config):
    """The run-defining settings in which `config` differs from a run's saved config.

    Args:
        saved: the run's config.json, a dict.
        config: a `TrainConfig`, the run asked for now.

    Returns:
        A list of "name: saved -> asked" strings, empty when `config`
        continues the saved run: only `RESUMABLE_FIELDS` may differ, and
        `epochs` only grow. A key that the saved config lacks (written
        before the field existed) counts as its default.
    """
    asked = dataclasses.replace(config, augment=resolve_augment(config)).to_dict()
    defaults = TrainConfig().to_dict()
    differences = []
    for name, value in asked.items():
        before = saved.get(name, defaults[name])
        if name == "epochs" and value < before:
            differences.append(f"epochs: {before!r} -> {value!r} (epochs may only grow)")
        elif name not in RESUMABLE_FIELDS and before != value:
            differences.append(f"{name}: {before!r} -> {value!r}")
    return differences


def make_strategy(distribute):
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """Whether this worker writes the run's record (always, on one worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def resolve_augment(config):
    """The augmentation "auto" stands for, known from the config alone (so a
    resumed run is compared with its config.json before any data is loaded)."""
    if config.augment != "auto":
        return config.augment
    # 8x8 digits: a 1-pixel crop shift is an eighth of the image; no flip.
    return "none" if config.dataset == "digits" else "standard"


def build_model(config, splits, inner=None):
    """The GMixModel of `config` around `inner`.

    Args:
        config: a `TrainConfig`.
        splits: the data's `Splits` (for the classes and the input shape).
        inner: a `keras.Model` (logits out) to wrap instead of
            `config.model`, e.g. a network the model registry lacks; its
            weight decay is then the caller's. Defaults to `None`.
    """
    if inner is None:
        inner = models_lib.build_model(
            config.model,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            weight_decay=config.weight_decay / 2,
            classifier_activation=None,  # logits: the loss applies the softmax stably
            batchnorm=keras.layers.BatchNormalization
            if config.stock_batchnorm
            else layers_lib.BatchNormalization,
        )
    return GMixModel(
        inner,
        method=config.method,
        rho=config.rho,
        alpha=config.alpha,
        sensitive_fraction=config.sensitive_fraction,
        adaptive=config.adaptive,
        eta=config.eta,
        mix=config.mix,
        seed=config.seed,
        perturb_every=config.perturb_every,
        reuse_scale=config.reuse_scale,
        perturb_probability=config.perturb_probability,
    )


def build_compiled_model(config, splits, steps_per_epoch, inner=None):
    """The GMixModel of `config`, compiled with its optimizer, schedule and loss.

    Call it inside the strategy's scope. With `label_smoothing`, the loss
    expects one-hot labels. `inner`: as in `build_model`.
    """
    model = build_model(config, splits, inner)
    optimizer = keras.optimizers.SGD(
        learning_rate_schedule(config, steps_per_epoch),
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    if config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        )
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=config.jit)
    return model


def default_output():
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def _check_new_output(output):
    """Refuses to start a new run over an existing one; says what to do instead."""
    if os.path.exists(os.path.join(output, "backup")):
        raise ValueError(
            f"{output} holds an unfinished run: pass --resume to continue it, "
            "or choose another --output."
        )
    if os.path.exists(os.path.join(output, "results.json")) or callbacks_lib.read_history(
        os.path.join(output, "history.csv")
    ):
        raise ValueError(
            f"{output} holds a finished run (results.json, history.csv): choose "
            "another --output, or delete the folder to train again."
        )


def _held_out_examples(splits, count, to_one_hot):
    """The first `count` test examples, preprocessed like the test pipeline."""
    pipeline = data_lib.make_pipeline(
        splits.x_test[:count],
        splits.y_test[:count],
        512,
        training=False,
        normalization=(splits.mean, splits.std),
    )
    xs, ys = zip(*pipeline.as_numpy_iterator())
    x, y = np.concatenate(xs), np.concatenate(ys)
    if to_one_hot:
        y = np.eye(splits.num_classes, dtype=np.float32)[y]
    return x, y


def run(config, callbacks=None):
    """Trains as `config` says; returns the results dict (also in results.json).

    Args:
        config: a `TrainConfig`.
        callbacks: extra Keras callbacks, run after the run's own ones
            (after the backup of each epoch). Defaults to `None`.

    Returns:
        The dict written to results.json.
    """
    config.validate()
    output = config.output or default_output()
    config = dataclasses.replace(config, output=output, augment=resolve_augment(config))
    strategy = make_strategy(config.distribute)
    folder = record_folder(output, strategy)
    if config.resume and not os.path.isdir(folder):
        # A typo in --output would otherwise start a new run there.
        raise FileNotFoundError(
            f"Cannot resume: {folder} does not exist. Check the --output path, "
            "or drop --resume to start a new run there."
        )
    os.makedirs(folder, exist_ok=True)
    with records.hold_run_folder(folder):
        return _run_held(config, folder, strategy, list(callbacks or []))


def record_folder(output, strategy):
    """The folder this process writes: `output`, or on a multi-worker run's
    other workers a scratch folder inside it."""
    if is_chief(strategy):
        return output
    return os.path.join(output, f"worker{strategy.cluster_resolver.task_id}")


def _write_config(folder, values):
    # Atomic: a kill mid-write must not leave --resume an empty config.json.
    checkpoint_lib.atomic_write_text(
        os.path.join(folder, "config.json"), json.dumps(values, indent=2)
    )


def _check_resume(config, folder):
    """Refuses a resume that would change the run; returns the saved config.json."""
    saved = records.read_json(os.path.join(folder, "config.json"), _config_fix(folder))
    differences = resume_differences(saved, config)
    if differences:
        raise ValueError(
            f"Cannot resume {folder} with other settings than it was started "
            f"with: {'; '.join(differences)}. Only {list(RESUMABLE_FIELDS)} may "
            "change on --resume (epochs only grow). Drop those flags to continue "
            "the run as it was (`gmix-train --resume --output DIR` alone reads "
            "config.json), or start a new run in another --output."
        )
    return saved


def _run_held(config, output, strategy, extra_callbacks):
    """`run` once this process holds the run folder `output`."""
    backup_dir = os.path.join(output, "backup")
    results_path = os.path.join(output, "results.json")
    if config.resume:
        saved = _check_resume(config, output)
        if not os.path.exists(backup_dir) and os.path.exists(results_path):
            if config.epochs != saved["epochs"]:
                raise ValueError(
                    f"{output} finished its {saved['epochs']} epochs and kept no "
                    "checkpoint to continue from: start a new run with "
                    f"epochs={config.epochs} in another --output."
                )
            # Finished already: nothing to continue.
            results = records.read_json(
                results_path,
                "restore it from a copy, or delete the run folder to train again "
                "(model.keras beside it holds the trained model)",
            )
            if config.verbose:
                print(f"gmix-train: {output} is finished already; nothing to resume.")
            return results
        if config.epochs != saved["epochs"]:
            # The record says what the run is now: only `epochs` is relabelled.
            _write_config(output, dict(saved, epochs=config.epochs))
    else:
        _check_new_output(output)
        _write_config(output, config.to_dict())

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        return _run(config, output, backup_dir, results_path, strategy, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def fit_and_evaluate(
    model,
    train_ds,
    test_ds,
    *,
    epochs,
    steps_per_epoch,
    callbacks,
    loggers,
    verbose,
    validation_freq=1,
):
    """Fits `model` on `train_ds` (validating on `test_ds`), then evaluates it on `test_ds`.

    Args:
        model: a compiled model.
        train_ds: the training `tf.data.Dataset`, shuffled by itself (fit
            does not shuffle).
        test_ds: the held-out `tf.data.Dataset`.
        epochs: int, the last epoch (a resumed fit starts at its backup's).
        steps_per_epoch: int, or `None` for one pass over a finite `train_ds`.
        callbacks: all Keras callbacks of the fit.
        loggers: those of `callbacks` to close (`on_train_end`) when fit is
            interrupted; not a backup, which is what a resume continues from.
        verbose: fit's verbosity.
        validation_freq: validate every this many epochs. Defaults to 1.

    Returns:
        `(history, wall_seconds, test)`: fit's `History.history`, the
        seconds of this fit, and the `evaluate` metrics dict.
    """
    start = time.time()
    try:
        history = model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=test_ds,
            validation_freq=validation_freq,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
        )
    except BaseException:
        # fit calls no on_train_end when it is interrupted: close the loggers'
        # files and writers (Keras' TensorBoard would otherwise leave its
        # summary context in force for the rest of the process).
        for callback in loggers:
            try:
                callback.on_train_end()
            except Exception:  # noqa: BLE001  the original error matters more
                pass
        raise
    wall_seconds = time.time() - start
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    return history.history, wall_seconds, test


def _run(config, output, backup_dir, results_path, strategy, extra_callbacks):
    splits = data_lib.load_dataset(**data_lib.data_arguments(config))

    # The stream of epochs starts where the backup ends, so that a resumed
    # run's epoch k has the shuffling and augmentation of epoch k.
    start_epoch = checkpoint_lib.resume_epoch(backup_dir, strategy) if config.resume else 0
    train_ds, test_ds = data_lib.make_pipelines(
        splits, config.batch_size, augment=config.augment, seed=config.seed, start_epoch=start_epoch
    )
    steps_per_epoch = math.ceil(splits.train_size / config.batch_size)
    one_hot = bool(config.label_smoothing)
    if one_hot:
        # Keras' label smoothing needs one-hot labels.
        to_one_hot = lambda x, y: (x, tf.one_hot(y, splits.num_classes))  # noqa: E731
        train_ds, test_ds = train_ds.map(to_one_hot), test_ds.map(to_one_hot)

    with strategy.scope():
        model = build_compiled_model(config, splits, steps_per_epoch)

    tensorboard = os.path.join(output, "tensorboard")
    # Order matters at epoch end: the timer adds `seconds` before the loggers
    # record it; the backup comes last, so that a run killed before its
    # backup redoes the epoch (and the CSV logger drops the stale row).
    loggers = [
        callbacks_lib.EpochTimer(),
        callbacks_lib.ResumableCSVLogger(os.path.join(output, "history.csv")),
        callbacks_lib.ResumableTensorBoard(tensorboard, update_freq=config.tensorboard_update_freq),
        callbacks_lib.StepValuesLogger(
            os.path.join(tensorboard, callbacks_lib.STEPS_RUN),
            update_freq=config.tensorboard_update_freq,
        ),
    ]
    if config.flatness_every:
        loggers.append(
            callbacks_lib.FlatnessMonitor(
                _held_out_examples(splits, config.flatness_examples, one_hot),
                every=config.flatness_every,
                log_dir=os.path.join(tensorboard, callbacks_lib.FLATNESS_RUN),
                plot_dir=os.path.join(output, "flatness"),
                rho=config.rho if config.rho > 0 else 0.05,
                seed=config.seed,
            )
        )
    # Kept until the results are written: a kill before that resumes
    # from the last epoch instead of training again from epoch 0.
    backup = checkpoint_lib.BackupAndRestore(backup_dir, delete_checkpoint=False)
    callbacks = loggers + [backup] + extra_callbacks

    _, wall_seconds, test = fit_and_evaluate(
        model,
        train_ds,
        test_ds,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,  # the training stream is endless
        callbacks=callbacks,
        loggers=loggers,
        verbose=config.verbose,
    )
    history = callbacks_lib.read_history(os.path.join(output, "history.csv"))
    last = history[-1] if history else {}
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "epochs": config.epochs,
        "epochs_done": len(history),
        "seed": config.seed,
        "class_names": None if splits.class_names is None else list(splits.class_names),
        "train_size": splits.train_size,
        "test_size": splits.test_size,
        "steps_per_epoch": steps_per_epoch,
        "parameters": int(model.inner.count_params()),
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "final_train": {
            k: v
            for k, v in last.items()
            if k not in ("epoch", "seconds") and not k.startswith("val_")
        },
        # Training time over all attempts of the run (history.csv's epoch
        # times, validation included); wall_seconds: this process's fit.
        "seconds": round(float(sum(row.get("seconds", 0.0) for row in history)), 2),
        "wall_seconds": round(wall_seconds, 2),
        "output": output,
    }
    # Each file appears whole or not at all; the backup goes last.
    model_tmp = os.path.join(output, ".tmp-model.keras")
    model.save(model_tmp)
    checkpoint_lib.replace_durably(model_tmp, os.path.join(output, "model.keras"))
    checkpoint_lib.atomic_write_text(results_path, json.dumps(results, indent=2))
    checkpoint_lib.remove(backup_dir)
    return results
