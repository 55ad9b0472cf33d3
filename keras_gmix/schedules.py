"""Learning-rate schedules of `gmix-train`: linear warm-up, then cosine / step / constant.

`LinearWarmup` is registered with Keras' serialization when this module is
imported, and `import keras_gmix` imports it: a saved model whose optimizer
warms up then loads in any program that imported keras_gmix, not only in
one that happened to import the training application.
"""

import keras


@keras.saving.register_keras_serializable(package="keras_gmix")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `target` over `warmup_steps`, then `after(step - warmup_steps)`.

    Args:
        target: float, the learning rate at the end of the warm-up.
        warmup_steps: int, the number of warm-up steps.
        after: a `LearningRateSchedule` or a float, used after the warm-up.
    """

    def __init__(self, target, warmup_steps, after):
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)
        self.after = after

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.target * (step + 1.0) / float(max(1, self.warmup_steps))
        after = self.after
        later = (
            after(step - self.warmup_steps) if callable(after) else keras.ops.cast(after, "float32")
        )
        return keras.ops.where(step < self.warmup_steps, warm, later)

    def get_config(self):
        after = self.after
        if isinstance(after, keras.optimizers.schedules.LearningRateSchedule):
            after = keras.saving.serialize_keras_object(after)
        return {"target": self.target, "warmup_steps": self.warmup_steps, "after": after}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["after"], dict):
            config["after"] = keras.saving.deserialize_keras_object(config["after"])
        return cls(**config)


def learning_rate_schedule(config, steps_per_epoch):
    """The learning rate per optimizer step: linear warm-up, then cosine / step / constant.

    `config` is a `config.TrainConfig` or any object with its fields
    `learning_rate`, `epochs`, `warmup_epochs`, `schedule`,
    `step_milestones` and `step_gamma` (read here, not imported, so that
    this library module does not depend on the training application).

    Cosine decays to 0 at the last step; step multiplies by `step_gamma` at
    each of `step_milestones` (fractions of the post-warm-up steps).
    """
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
        boundaries = [int(m * (total - warmup)) for m in config.step_milestones]
        values = [config.learning_rate * config.step_gamma**i for i in range(len(boundaries) + 1)]
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        after = config.learning_rate
    return LinearWarmup(config.learning_rate, warmup, after) if warmup else after
