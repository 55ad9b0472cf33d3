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


def learning_rate_schedule(
    *,
    learning_rate,
    epochs,
    steps_per_epoch,
    schedule="cosine",
    warmup_epochs=0.0,
    step_milestones=(0.5, 0.75),
    step_gamma=0.1,
):
    """The learning rate per optimizer step: linear warm-up, then cosine / step / constant.

    Args:
        learning_rate: float, the peak rate (reached after the warm-up).
        epochs: int, the run's length in epochs.
        steps_per_epoch: int, optimizer steps per epoch.
        schedule: `"cosine"` (decays to 0 at the last step), `"step"`
            (times `step_gamma` at each milestone) or `"constant"`.
            Defaults to `"cosine"`.
        warmup_epochs: float, epochs of linear warm-up from 0. Defaults to 0.0.
        step_milestones: fractions of the post-warm-up steps where the step
            schedule drops. Defaults to (0.5, 0.75).
        step_gamma: float, the step schedule's factor. Defaults to 0.1.

    Returns:
        A `LearningRateSchedule`, or a float for a constant rate without
        warm-up.
    """
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(1, total - warmup),
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if schedule == "step":
        boundaries = [int(m * (total - warmup)) for m in step_milestones]
        values = [learning_rate * step_gamma**i for i in range(len(boundaries) + 1)]
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        after = learning_rate
    return LinearWarmup(learning_rate, warmup, after) if warmup else after
