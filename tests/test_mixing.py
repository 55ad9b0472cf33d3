"""sample_mix / apply_mix: the draw is seeded, the application is pure and exact."""

import keras
import numpy as np
import pytest

import keras_gmix as kg
from keras_gmix import mixing


def test_mixup_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 3, 2)).astype("float32")
    y = np.eye(4, dtype="float32")[[0, 1, 2, 3, 1]]
    perm = np.array([2, 0, 1, 4, 3])
    x_mix, y_mix = kg.apply_mix(x, y, 0.3, perm)
    np.testing.assert_allclose(x_mix, 0.3 * x + 0.7 * x[perm], rtol=1e-6)
    np.testing.assert_allclose(y_mix, 0.3 * y + 0.7 * y[perm], rtol=1e-6)


def test_per_example_lambda():
    x = np.arange(12, dtype="float32").reshape(4, 3)
    y = np.eye(4, dtype="float32")
    lam = np.array([0.0, 0.25, 0.5, 1.0], "float32")
    perm = np.array([1, 2, 3, 0])
    x_mix, y_mix = kg.apply_mix(x, y, lam, perm)
    np.testing.assert_allclose(x_mix, lam[:, None] * x + (1 - lam[:, None]) * x[perm])
    np.testing.assert_allclose(y_mix, lam[:, None] * y + (1 - lam[:, None]) * y[perm])


def test_cutmix_box_and_label_weight():
    x = np.zeros((2, 8, 8, 1), "float32")
    x[1] = 1.0
    y = np.eye(2, dtype="float32")
    perm = np.array([1, 0])
    lam = 1 - 16 / 64  # a 4x4 box
    x_mix, y_mix = kg.apply_mix(x, y, lam, perm, mix="cutmix", box_center=[0.5, 0.5])
    pasted = np.asarray(x_mix)[0, :, :, 0]
    assert pasted.sum() == 16 and pasted[2:6, 2:6].sum() == 16
    np.testing.assert_allclose(y_mix[0], [0.75, 0.25], rtol=1e-6)


def test_cutmix_clipped_box_recomputes_lambda():
    x = np.zeros((2, 8, 8, 1), "float32")
    x[1] = 1.0
    y = np.eye(2, dtype="float32")
    # A 4x4 box centred on the corner keeps only its 2x2 quarter.
    x_mix, y_mix = kg.apply_mix(x, y, 1 - 16 / 64, [1, 0], mix="cutmix", box_center=[0.0, 0.0])
    assert np.asarray(x_mix)[0].sum() == 4
    np.testing.assert_allclose(y_mix[0], [1 - 4 / 64, 4 / 64], rtol=1e-6)


def test_cutmix_rejects_non_images():
    with pytest.raises(ValueError, match="cutmix"):
        kg.apply_mix(
            np.zeros((2, 5), "float32"), np.eye(2, dtype="float32"), 0.5, [1, 0], mix="cutmix"
        )


def test_sample_mix_is_seeded_and_valid():
    lam1, perm1 = kg.sample_mix(16, 1.0, seed=7)
    lam2, perm2 = kg.sample_mix(16, 1.0, seed=7)
    lam3, perm3 = kg.sample_mix(16, 1.0, seed=8)
    assert float(lam1) == float(lam2) and np.array_equal(perm1, perm2)
    assert (float(lam1), list(perm1)) != (float(lam3), list(perm3))
    assert sorted(np.asarray(perm1).tolist()) == list(range(16))
    assert 0.0 <= float(lam1) <= 1.0


def test_seed_generator_advances():
    generator = keras.random.SeedGenerator(3)
    first = kg.sample_mix(8, 1.0, seed=generator)
    second = kg.sample_mix(8, 1.0, seed=generator)
    assert float(first[0]) != float(second[0])


def test_lambda_follows_beta_distribution():
    # Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)).
    for alpha in (0.2, 1.0, 4.0):
        lam, _ = kg.sample_mix(20000, alpha, seed=1, per_example=True)
        lam = np.asarray(lam)
        assert lam.mean() == pytest.approx(0.5, abs=0.01)
        assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


@pytest.mark.parametrize("alpha", [0, -1.0, "1"])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        kg.sample_mix(4, alpha)


def test_bad_mix_mode():
    with pytest.raises(ValueError, match="mixup.*cutmix"):
        mixing.check_mix("manifold")
