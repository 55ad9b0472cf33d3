"""fit with CutMix on images and with one mixing coefficient per example:
one step's weights against the batch built by hand from the public pieces
(sample_mix, sample_box_center, apply_mix) and update_gradients."""

import keras
import numpy as np
import pytest

import keras_gmix as kg
from keras_gmix import mixing
from tests.helpers.common import assert_trained_to, weights_after_sgd_step

N, C = 8, 3


def conv_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(C),
        ]
    )


def images(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 8, 8, 3)).astype("float32"), rng.integers(0, C, N)


@pytest.mark.parametrize(
    "mix,per_example_lam,method",
    [
        ("cutmix", False, "dgmix"),
        ("cutmix", True, "gmix"),
        ("mixup", True, "bgmix"),
        ("cutmix", True, "mixup"),
    ],
)
def test_one_fit_step_uses_the_hand_mixed_batch(mix, per_example_lam, method):
    x, y = images()
    model = kg.GMixModel(
        conv_model(), method=method, alpha=1.0, mix=mix, per_example_lam=per_example_lam, seed=11
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    # The draw of step 1 (the model's first), rebuilt from the public pieces.
    mix_seed, box_seed = mixing.split_seed(model.mixing_seed(1), 2)
    lam, perm = kg.sample_mix(N, 1.0, seed=mix_seed, per_example=per_example_lam)
    box = (
        kg.sample_box_center(N, seed=box_seed, per_example=per_example_lam)
        if mix == "cutmix"
        else None
    )
    x_mix, y_mix = kg.apply_mix(x, keras.ops.one_hot(y, C), lam, perm, mix=mix, box_center=box)
    x_mix, perm = np.asarray(x_mix), np.asarray(perm)
    if per_example_lam:
        assert len(set(np.round(np.asarray(lam), 6))) > 1  # really one coefficient per example
    if mix == "cutmix":
        # Every pixel comes from the example or from its partner, and some from each.
        x_np, partner = x, x[perm]
        from_self = np.all(x_mix == x_np, axis=-1)
        from_partner = np.all(x_mix == partner, axis=-1)
        assert np.all(from_self | from_partner)
        assert from_partner.any() and from_self.any()

    expected = weights_after_sgd_step(conv_model(), x_mix, y_mix, method)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    assert_trained_to(model, expected)
