"""A complete training run from a typed config: the library side of `gmix-train`.

`TrainConfig` holds every setting of a run; `run(config)` loads the data,
builds the model inside the distribution strategy, compiles, fits with
checkpoints that survive a kill, and writes the record of the run into its
output folder:

    config.json      the resolved config
    history.csv      one row per epoch (keras.callbacks.CSVLogger)
    tensorboard/     TensorBoard logs
    backup/          BackupAndRestore checkpoints (removed when a run ends)
    model.keras      the trained GMixModel
    results.json     test accuracy and loss, method, epochs, seconds, ...
"""

import dataclasses
import json
import math
import os
import time
from typing import Optional

import keras
import tensorflow as tf

from keras_gmix import data as data_lib
from keras_gmix import models as models_lib
from keras_gmix.gradients import METHODS
from keras_gmix.model import GMixModel

SCHEDULES = ("cosine", "step", "constant")
DISTRIBUTE = ("none", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the main job (digits, dgmix)."""

    dataset: str = "digits"
    data_dir: Optional[str] = None
    download: bool = True
    train_fraction: Optional[float] = None
    train_size: Optional[int] = None
    image_size: Optional[int] = None  # digits only: upsample 8x8 to this side
    augment: str = "none"
    model: str = "small_cnn"
    method: str = "dgmix"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
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
    label_smoothing: float = 0.0
    seed: int = 0
    output: Optional[str] = None
    resume: bool = False
    distribute: str = "none"
    jit: bool = False
    mixed_precision: str = "float32"
    tensorboard_update_freq: int = 10  # steps between TensorBoard scalars
    verbose: int = 1

    def validate(self):
        """Raises a ValueError naming the first bad setting."""
        choices = {
            "method": METHODS,
            "schedule": SCHEDULES,
            "distribute": DISTRIBUTE,
            "mixed_precision": PRECISIONS,
            "model": models_lib.MODEL_NAMES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"`{name}` must be one of {allowed}. Received: {getattr(self, name)!r}"
                )
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0. Received: {self.learning_rate!r}")
        if self.distribute == "multiworker" and "TF_CONFIG" not in os.environ:
            raise ValueError(
                "`distribute='multiworker'` needs the TF_CONFIG environment "
                "variable (cluster and task of this worker); see README."
            )

    @classmethod
    def from_dict(cls, values):
        """A config from a dict (e.g. a JSON/YAML file); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            import difflib

            hints = [
                f"{key!r} (did you mean {difflib.get_close_matches(key, fields, 1)[0]!r}?)"
                if difflib.get_close_matches(key, fields, 1)
                else repr(key)
                for key in unknown
            ]
            raise ValueError(f"Unknown config keys: {', '.join(hints)}. Valid keys: {sorted(fields)}")
        values = dict(values)
        if "step_milestones" in values:
            values["step_milestones"] = tuple(values["step_milestones"])
        return cls(**values)


def load_config_file(path):
    """Reads a JSON or YAML config file into a dict."""
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


def make_strategy(distribute):
    if distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if distribute == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def learning_rate_schedule(config, steps_per_epoch):
    """The learning rate per optimizer step: warm-up, then cosine / step / constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else config.learning_rate,
            decay_steps=max(1, total - warmup),
            warmup_target=config.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if config.schedule == "step":
        boundaries = [int(m * total) for m in config.step_milestones]
        values = [config.learning_rate * config.step_gamma**i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return config.learning_rate


def build_model(config, splits):
    inner = models_lib.build_model(
        config.model,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        weight_decay=config.weight_decay / 2,
        classifier_activation=None,  # logits: the loss applies the softmax stably
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
    )


def default_output():
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def run(config):
    """Trains as `config` says; returns the results dict (also in results.json)."""
    config.validate()
    output = config.output or default_output()
    config = dataclasses.replace(config, output=output)
    backup_dir = os.path.join(output, "backup")
    if os.path.exists(backup_dir) and not config.resume:
        raise ValueError(
            f"{output} holds an unfinished run: pass --resume to continue it, "
            "or choose another --output."
        )
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)

    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    strategy = make_strategy(config.distribute)
    splits = data_lib.load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        train_fraction=config.train_fraction,
        train_size=config.train_size,
        seed=config.seed,
        **({"image_size": config.image_size} if config.dataset == "digits" else {}),
    )
    train_ds, test_ds = data_lib.make_pipelines(
        splits, config.batch_size, augment=config.augment, seed=config.seed
    )
    steps_per_epoch = math.ceil(splits.train_size / config.batch_size)
    if config.label_smoothing:
        # Keras' label smoothing needs one-hot labels.
        to_one_hot = lambda x, y: (x, tf.one_hot(y, splits.num_classes))  # noqa: E731
        train_ds, test_ds = train_ds.map(to_one_hot), test_ds.map(to_one_hot)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    with strategy.scope():
        model = build_model(config, splits)
        optimizer = keras.optimizers.SGD(
            learning_rate_schedule(config, steps_per_epoch), momentum=config.momentum, nesterov=True
        )
        if config.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=loss,
            metrics=["accuracy"],
            jit_compile=config.jit,
        )
    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.CSVLogger(os.path.join(output, "history.csv"), append=config.resume),
        keras.callbacks.TensorBoard(
            os.path.join(output, "tensorboard"), update_freq=config.tensorboard_update_freq
        ),
    ]
    start = time.time()
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        validation_data=test_ds,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
    )
    seconds = time.time() - start
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "method": config.method,
        "epochs": config.epochs,
        "seed": config.seed,
        "train_size": splits.train_size,
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "final_train": {k: float(v[-1]) for k, v in history.history.items() if not k.startswith("val_")},
        "seconds": round(seconds, 2),
        "output": output,
    }
    model.save(os.path.join(output, "model.keras"))
    with open(os.path.join(output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results
