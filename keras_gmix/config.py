"""The settings of a training run: `TrainConfig`, its checks, its files.

`TrainConfig` is the typed config of `gmix-train` (every field a flag and a
key of a `--config` JSON/YAML file). This module also holds what is known
from a config alone, before any data or model exists: each field's range
and help sentence, config-file loading, and the rules of `--resume` (which
settings may change, and the run folder's saved config.json merged under
the flags). `keras_gmix.train` runs a config.
"""

import dataclasses
import difflib
import json
import os
import typing
from typing import Optional

from keras_gmix import checks, mixing, perturb_schedule, records
from keras_gmix import data as data_lib
from keras_gmix import models as models_lib
from keras_gmix.gradients import METHODS

SCHEDULES = ("cosine", "step", "constant")
DISTRIBUTE = ("none", "mirrored", "multiworker")
# Keras' backends a run trains on ("auto": the one Keras runs on).
BACKENDS = ("tensorflow", "jax")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
AUGMENT = ("auto",) + tuple(data_lib.AUGMENTATIONS)
MIXES = mixing.MIX_MODES
COLOR_MODES = tuple(data_lib.COLOR_MODES)

# Keys of a run's config.json that record what the run found rather than
# what was asked (`train.run` adds them): not settings, so `from_dict`
# leaves them out, and a run's config.json can be given as `--config`.
RECORD_KEYS = ("data_fingerprint",)

# The settings of a run (TrainConfig fields, config.json keys) that decide
# its data and preprocessing: `load_dataset`'s arguments, `dataset` its name.
DATA_KEYS = (
    "dataset",
    "test_dataset",
    "data_dir",
    "download",
    "train_fraction",
    "train_size",
    "image_size",
    "color_mode",
    "seed",
)


def data_arguments(config):
    """The `load_dataset` keyword arguments held by a run's settings.

    Args:
        config: a `TrainConfig`, or a dict such as a run's `config.json`.
            Settings it lacks, or sets to `None`, keep `load_dataset`'s
            defaults.

    Returns:
        A dict for `load_dataset(**data_arguments(config))`: the
        `DATA_KEYS` that are set, `dataset` given as `name`.
    """
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    arguments = {key: get(key) for key in DATA_KEYS if get(key) is not None}
    if "dataset" in arguments:
        arguments["name"] = arguments.pop("dataset")
    return arguments


# Learning-rate schedules laid out over the run's length (cosine decays to 0
# at the last step, step's milestones are fractions of it): more epochs on
# --resume would move every later rate, and the rate would jump at the first
# resumed step, so a resume may add epochs only to a run of another schedule.
LENGTH_DEPENDENT_SCHEDULES = ("cosine", "step")


def setting(default, help, choices=None, number_range=None, resumable=False):
    """A TrainConfig field with its metadata, so that a new setting is one edit.

    Args:
        default: the field's default value.
        help: str, one sentence: what it does, its unit or allowed values
            (gmix-train's help adds the default).
        choices: tuple or None, the values it may take (also the flag's
            argparse choices). Defaults to None (any value of its type).
        number_range: dict or None, keywords of `checks.check_number` for a
            numeric field. Defaults to None: a finite number of its type.
        resumable: bool, whether `--resume` may change it: True for where
            the data and the record are and how the run is watched, not for
            what is trained; `epochs` may only grow. Defaults to False, so a
            field added later defines the run (`resume_differences`).
    """
    metadata = dict(help=help, choices=choices, number_range=number_range, resumable=resumable)
    return dataclasses.field(default=default, metadata=metadata)


def field_kind(field):
    """`(type, optional)` of a TrainConfig field: `Optional[float]` is `(float, True)`."""
    if typing.get_origin(field.type) is typing.Union:
        kinds = [kind for kind in typing.get_args(field.type) if kind is not type(None)]
        return kinds[0], True
    return field.type, False


def check_milestones(milestones):
    """Returns the step schedule's milestones as a tuple of floats, strictly
    increasing in (0, 1)."""
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


# The settings that name a file or folder.
PATH_FIELDS = ("output", "dataset", "test_dataset", "data_dir")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the main job (digits, dgmix).

    Every field is a `gmix-train` flag (`train_size` is `--train-size`) and
    a key of a `--config` JSON/YAML file, and carries its help sentence,
    choices, number range and resumability (`setting`): the tables below
    the class and the command line are derived from them.
    """

    dataset: str = setting(
        "digits",
        "Training data: a TFDS name (cifar10, cifar100, svhn_cropped, stl10), 'digits' "
        "(scikit-learn, offline), a .npz file with x_train/y_train/x_test/y_test, or a "
        "folder with one subfolder of images per class.",
    )
    test_dataset: Optional[str] = setting(
        None,
        "Folder data sets only: a second folder of class subfolders to test on (same class "
        "names); without it a stratified fifth of the training folder is held out, always "
        "the same images.",
    )
    data_dir: Optional[str] = setting(
        None,
        "Directory where TensorFlow Datasets keeps (and downloads) its data.",
        resumable=True,
    )
    download: bool = setting(
        True,
        "Let TensorFlow Datasets download a data set that is not prepared yet.",
        resumable=True,
    )
    train_fraction: Optional[float] = setting(
        None,
        "Train on a class-balanced fraction in (0, 1] of the training split (the "
        "limited-data regime); the test split is never reduced.",
        number_range=dict(low=0, low_inclusive=False, high=1),
    )
    train_size: Optional[int] = setting(
        None,
        "Train on this many training examples (class-balanced); exclusive with --train-fraction.",
        number_range=dict(low=1),
    )
    image_size: Optional[int] = setting(
        None,
        "Side length in pixels (at most 4096) that images are resized to: digits (8x8 "
        "upsampled) and folder data sets (default there: the first image's size).",
        number_range=dict(low=1, high=data_lib.MAX_IMAGE_SIZE),
    )
    color_mode: str = setting(
        "rgb",
        "Folder data sets only: rgb (3 channels) or grayscale (1); every image is "
        "converted to it, whatever its own mode (as Keras' image_dataset_from_directory).",
        choices=COLOR_MODES,
    )
    # "auto": "standard" (pad-crop, flip where label-preserving) for image
    # data sets, "none" for the 8x8 digits.
    augment: str = setting(
        "auto",
        "Training augmentation: 'standard' pads, crops and flips (flips only where "
        "label-preserving), 'randaugment'/'erasing'/'strong' add Keras' layers, 'auto' is "
        "'none' for digits and 'standard' otherwise.",
        choices=AUGMENT,
    )
    model: str = setting(
        "small_cnn",
        "Architecture to train (keras_gmix.models).",
        choices=models_lib.MODEL_NAMES,
    )
    stock_batchnorm: bool = setting(
        False,
        "Use Keras' BatchNormalization instead of keras_gmix's fused one.",
    )
    method: str = setting(
        "dgmix",
        "Training method: erm (plain), mixup, sam, gmix (Mixup + SAM), bgmix or dgmix "
        "(Binary / Decomposed G-Mix; README's method table).",
        choices=METHODS,
    )
    epochs: int = setting(
        30,
        "Number of passes over the training split.",
        number_range=dict(low=1),
        resumable=True,
    )
    batch_size: int = setting(
        64,
        "Training examples per step (the global batch under a distribution strategy).",
        number_range=dict(low=1),
    )
    learning_rate: float = setting(
        0.05,
        "Peak learning rate of SGD (after warm-up).",
        number_range=dict(low=0, low_inclusive=False),
    )
    momentum: float = setting(
        0.9,
        "SGD momentum in [0, 1].",
        number_range=dict(low=0, high=1),
    )
    nesterov: bool = setting(
        True,
        "Use Nesterov momentum.",
    )
    # PyTorch-style coupled weight decay (the papers' 5e-4): an L2 term
    # weight_decay / 2 * ||w||^2 on kernels, evaluated at w.
    weight_decay: float = setting(
        5e-4,
        "Coupled L2 weight decay on kernels (PyTorch's convention: the term weight_decay / "
        "2 * ||w||^2), evaluated at w.",
        number_range=dict(low=0),
    )
    schedule: str = setting(
        "cosine",
        "Learning-rate schedule after warm-up: cosine (to 0), step (times --step-gamma at "
        "each milestone) or constant.",
        choices=SCHEDULES,
    )
    warmup_epochs: float = setting(
        0.0,
        "Epochs of linear learning-rate warm-up from 0 (may be fractional).",
        number_range=dict(low=0),
    )
    step_milestones: tuple = setting(
        (0.5, 0.75),
        "Step schedule: fractions of training in (0, 1), increasing, where the learning "
        "rate drops.",
    )
    step_gamma: float = setting(
        0.1,
        "Step schedule: factor the learning rate is multiplied by at each milestone.",
        number_range=dict(low=0, low_inclusive=False),
    )
    rho: float = setting(
        0.05,
        "Radius of the SAM neighbourhood (>= 0; 0 turns the perturbation off).",
        number_range=dict(low=0),
    )
    alpha: float = setting(
        1.0,
        "Concentration of the Beta(alpha, alpha) mixing coefficient (> 0).",
        number_range=dict(low=0, low_inclusive=False),
    )
    sensitive_fraction: float = setting(
        0.5,
        "bgmix/dgmix: fraction in [0, 1] of each batch treated as sharp.",
        number_range=dict(low=0, high=1),
    )
    adaptive: bool = setting(
        False,
        "ASAM's scale-invariant perturbation instead of SAM's.",
    )
    eta: float = setting(
        0.01,
        "ASAM's offset added to |w| (>= 0).",
        number_range=dict(low=0),
    )
    mix: str = setting(
        "mixup",
        "How examples are mixed: mixup (blend) or cutmix (paste a box; image data only).",
        choices=MIXES,
    )
    # Efficient schedules (SPEC.md section 4b): the full perturbed step every
    # k-th step (or with probability p), a 1F+1B step in between, optionally
    # plus reuse_scale times the stored orthogonal direction.
    perturb_every: int = setting(
        1,
        "Perturbed methods: the full step every k-th optimizer step, a cheap one in "
        "between: one forward and one backward pass, mixup's step (erm's for sam) "
        "(integer >= 1).",
        number_range=dict(low=1),
    )
    reuse_scale: float = setting(
        0.0,
        "On the cheap steps of a schedule, add the stored orthogonal direction scaled to "
        "this times ||g|| (LookSAM; >= 0, 0 is off).",
        number_range=dict(low=0),
    )
    perturb_probability: float = setting(
        1.0,
        "Perturbed methods: probability in (0, 1] that a step is full, drawn from (seed, "
        "step); not with --perturb-every > 1.",
        number_range=dict(low=0, low_inclusive=False, high=1),
    )
    # The late phase: cheap steps before this step, the schedule above from
    # it on. A fraction in (0, 1) of the run's total steps is resolved into
    # a step when the run starts (and saved so in config.json).
    perturb_from: float = setting(
        0,
        "Perturbed methods: the late phase. Steps before this one are plain, full steps "
        "(as --perturb-every / --perturb-probability say) from it on: a step (integer >= "
        "0) or a fraction in [0, 1) of the run's total steps, e.g. 0.875 for the last "
        "eighth (resolved into a step and saved so in config.json).",
    )
    # bgmix/dgmix: False trades one more forward pass for about half the
    # working memory (the same update).
    keep_first_pass: bool = setting(
        True,
        "bgmix/dgmix: keep the first pass's tape for the flat subset's gradient (2F+3B); "
        "--no-keep-first-pass gives the same update with one more forward pass (3F+3B) and "
        "about sam's working memory instead of twice it.",
    )
    label_smoothing: float = setting(
        0.0,
        "Label smoothing in [0, 1] of the cross-entropy (one-hot labels).",
        number_range=dict(low=0, high=1),
    )
    seed: int = setting(
        0,
        "Seed of initialization, shuffling, augmentation, mixing and subsets (0 to 2**32 - 1).",
        # NumPy's seed range (keras.utils.set_random_seed)
        number_range=dict(low=0, high=2**32 - 1),
    )
    # TensorFlow's op determinism (process-wide, stays on): the same seed
    # gives the same weights bit for bit on one CPU device, also across
    # --resume (augment "none"/"standard"; see the module docstring).
    deterministic: bool = setting(
        False,
        "Turn on TensorFlow's op determinism: the same seed gives the same weights bit for "
        "bit on one CPU device.",
    )
    output: Optional[str] = setting(
        None,
        "Folder of the run's record (config.json, history.csv, model.keras, results.json, "
        "...); default runs/<time>.",
        resumable=True,
    )
    resume: bool = setting(
        False,
        "Continue the killed run in --output from its last finished epoch.",
        resumable=True,
    )
    backend: str = setting(
        "auto",
        "Keras backend: tensorflow or jax (gmix-train sets KERAS_BACKEND from it before Keras "
        "is imported); auto: the one Keras runs on (KERAS_BACKEND, else tensorflow). Saved "
        "resolved in config.json; a run resumes on the backend it started on.",
        choices=("auto",) + BACKENDS,
    )
    distribute: str = setting(
        "none",
        "Distribution strategy: none, mirrored (the GPUs of this machine) or multiworker "
        "(needs TF_CONFIG).",
        choices=DISTRIBUTE,
    )
    jit: Optional[bool] = setting(
        None,
        "Compile the training step with XLA (compile(jit_compile=True)); not set: on for JAX, "
        "off for TensorFlow (JAX's fit runs op by op without it). Saved resolved in "
        "config.json.",
    )
    mixed_precision: str = setting(
        "float32",
        "Keras mixed-precision policy: float32, mixed_float16 (with loss scaling) or "
        "mixed_bfloat16.",
        choices=PRECISIONS,
    )
    tensorboard_update_freq: int = setting(
        10,
        "Steps between the TensorBoard batch values.",
        number_range=dict(low=1),
        resumable=True,
    )
    flatness_every: int = setting(
        0,
        "Measure flatness (FlatnessMonitor) every N epochs; 0 turns it off.",
        number_range=dict(low=0),
        resumable=True,
    )
    flatness_examples: int = setting(
        256,
        "Held-out (test) examples the flatness measures use.",
        number_range=dict(low=1),
        resumable=True,
    )
    verbose: int = setting(
        1,
        "Keras fit's verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
        number_range=dict(low=0, high=2),
        resumable=True,
    )

    def __post_init__(self):
        # Each field on its own: type, finiteness, range. A config file's
        # `adaptive: "no"` or `epochs: "ten"` stops here with the field's
        # name, and numbers become plain Python ones (NumPy scalars welcome).
        for field in dataclasses.fields(self):
            kind, optional = field_kind(field)
            value = getattr(self, field.name)
            if optional and value is None:
                continue
            if field.name == "perturb_from":  # a step (int) or a fraction (float)
                value = perturb_schedule.check_perturb_from_setting(value)
            elif kind is bool:
                value = checks.check_bool(field.name, value)
            elif kind in (int, float):
                number_range = field.metadata.get("number_range") or {}
                value = checks.check_number(field.name, value, integer=kind is int, **number_range)
            elif field.name == "step_milestones":
                value = check_milestones(value)
            elif kind is str and not isinstance(value, str):
                # `output: 5` in a config file: a path or a name, never a number.
                raise ValueError(
                    f"Argument `{field.name}` must be a string (a name or a path). "
                    f"Received: {field.name}={value!r}"
                )
            elif field.name in PATH_FIELDS:
                # "~" as the shell would (it does not in a config file, nor
                # in `--output=~/x`); a TFDS name never starts with it.
                value = os.path.expanduser(value)
            setattr(self, field.name, value)

    def validate(self):
        """Raises a ValueError naming the first bad setting (each field's own
        type and range are checked when the config is made)."""
        for field in dataclasses.fields(self):
            name, allowed = field.name, field.metadata.get("choices")
            if allowed and getattr(self, name) not in allowed:
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
        values = {key: value for key, value in values.items() if key not in RECORD_KEYS}
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


# Views of the fields' metadata, for the code that wants one aspect of all
# fields (the CLI, the resume check, the tests).
_FIELDS = dataclasses.fields(TrainConfig)
FIELD_HELP = {f.name: f.metadata["help"] for f in _FIELDS}
FIELD_CHOICES = {f.name: f.metadata["choices"] for f in _FIELDS if f.metadata["choices"]}
NUMBER_RANGES = {f.name: f.metadata["number_range"] for f in _FIELDS if f.metadata["number_range"]}
RESUMABLE_FIELDS = tuple(f.name for f in _FIELDS if f.metadata["resumable"])


def resolve_perturb_from(config, steps_per_epoch):
    """`config` with `perturb_from` as a step: a fraction of the run's total
    steps (epochs x steps_per_epoch) is resolved, a step stays."""
    total_steps = config.epochs * steps_per_epoch
    return dataclasses.replace(
        config, perturb_from=perturb_schedule.resolve_perturb_from(config.perturb_from, total_steps)
    )


def _parse_config_text(path, text):
    """The value in a config file's text: YAML when named .yaml/.yml, else JSON."""
    expected = (
        "Config files are JSON, or YAML when their name ends in .yaml or .yml, and hold "
        'a mapping of settings, e.g. {"epochs": 10}'
    )
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            return yaml.safe_load(text) or {}  # no YAML document: no settings
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise ValueError(
                f"Config file {path} is not valid YAML ({where}{problem}). {expected}."
            ) from None
    if not text.strip():
        raise ValueError(f"Config file {path} is empty. {expected}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Config file {path} is not valid JSON (line {error.lineno}, column "
            f"{error.colno}: {error.msg}). {expected}."
        ) from None


def load_config_file(path):
    """Reads a JSON or YAML config file into a dict (dashes in keys become underscores).

    Every mistake is one sentence naming the file (and the key or line
    where known): a missing, empty or unparsable file, a key that is not a
    setting's name, a value of the wrong type or range.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Config file {path} does not exist: check the --config path."
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Config file {path} cannot be read as text ({error}).") from None
    values = _parse_config_text(path, text)
    if not isinstance(values, dict):
        raise ValueError(
            f"Config file {path} must hold a mapping of settings (key: value), "
            f"not a {type(values).__name__}."
        )
    keys = [key for key in values if not isinstance(key, str)]
    if keys:
        raise ValueError(
            f"Config file {path} has the key {keys[0]!r}, which is not a setting name: "
            "keys are the flags' names without dashes, e.g. epochs or batch_size."
        )
    values = {key.replace("-", "_"): value for key, value in values.items()}
    try:
        TrainConfig.from_dict(values)  # each key and value on its own, named with the file
    except ValueError as error:
        raise ValueError(f"In config file {path}: {error}") from None
    return values


def missing_config_fix(output):
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
    return records.read_json(path, missing_config_fix(output))


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
        `epochs` only grow, and only when the schedule does not depend on
        the run's length (`LENGTH_DEPENDENT_SCHEDULES`). A key that the
        saved config lacks (written before the field existed) counts as its
        default.
    """
    asked = resolved(config).to_dict()
    defaults = dict(TrainConfig().to_dict(), **LEGACY_DEFAULTS)
    differences = []
    for name, value in asked.items():
        before = saved.get(name, defaults[name])
        if name == "epochs" and value < before:
            differences.append(f"epochs: {before!r} -> {value!r} (epochs may only grow)")
        elif (
            name == "epochs" and value > before and asked["schedule"] in LENGTH_DEPENDENT_SCHEDULES
        ):
            differences.append(
                f"epochs: {before!r} -> {value!r} (the {asked['schedule']} learning-rate "
                f"schedule is laid out over the run's {before} epochs: more would make the "
                "learning rate jump at the first resumed step; only a run with "
                "schedule 'constant' may be given more epochs)"
            )
        elif name not in RESUMABLE_FIELDS and before != value:
            differences.append(f"{name}: {before!r} -> {value!r}")
    return differences


# What a config.json written before a field existed meant by leaving it out,
# where that is not the field's default: runs trained on TensorFlow only
# before `backend` was a setting, and without XLA unless asked before `jit`
# could be left to the backend.
LEGACY_DEFAULTS = {"backend": "tensorflow", "jit": False}


def resolved(config):
    """`config` with its "auto" and not-set settings resolved, as config.json
    saves them: the augmentation, the backend and XLA."""
    backend = resolve_backend(config)
    return dataclasses.replace(
        config,
        augment=resolve_augment(config),
        backend=backend,
        jit=resolve_jit(config, backend),
    )


def resolve_jit(config, backend):
    """Whether the run's step is compiled with XLA: `config.jit` when set;
    else on for JAX, whose `fit` without jit dispatches every op from Python
    (on 2 CPU cores the default digits job takes 9.1 s an epoch against
    1.9 s with XLA, and with `--perturb-every 3 --perturb-from 0.5` 145 s
    against 5 s), and off for TensorFlow, whose graph mode needs no XLA
    (Keras' own `jit_compile="auto"` is off on a TensorFlow CPU)."""
    if config.jit is not None:
        return config.jit
    return backend == "jax"


def resolve_backend(config):
    """The backend of a run (`config.backend` resolved): the one Keras runs
    on in this process, which a `backend` other than "auto" must name
    (`check_backend`)."""
    return check_backend(config.backend, resumed=config.resume)


def check_backend(asked, resumed=False):
    """The backend Keras runs on in this process, if `asked` ("auto" or a
    name in `BACKENDS`) allows it.

    Raises:
        ValueError: `asked` names another backend than the one Keras was
            imported with; the message says how to choose it (`resumed`:
            the name came from the run being resumed).
    """
    import keras

    running = keras.backend.backend()
    if asked in ("auto", running):
        return running
    resumed = " (the backend the run in --output was started on)" if resumed else ""
    raise ValueError(
        f"`backend` is {asked!r}{resumed}, but Keras runs on {running!r} in this "
        "process: the backend is fixed when Keras is first imported. Start the "
        f"command with `--backend {asked}` (gmix-train, gmix-compare and gmix-flatness set "
        "KERAS_BACKEND from it before Keras is imported), or set "
        f"KERAS_BACKEND={asked} before Python imports Keras."
    )


def resolve_augment(config):
    """The augmentation "auto" stands for, known from the config alone (so a
    resumed run is compared with its config.json before any data is loaded)."""
    if config.augment != "auto":
        return config.augment
    # 8x8 digits: a 1-pixel crop shift is an eighth of the image; no flip.
    return "none" if config.dataset == "digits" else "standard"
