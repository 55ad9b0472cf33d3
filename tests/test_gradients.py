"""update_gradients against an independent NumPy reference, and its limits."""

import keras
import numpy as np
import pytest

import keras_gmix as kg
from keras_gmix import gradients
from tests import numpy_reference as ref
from tests.helpers.common import linear_model, traced

N, D, C = 24, 6, 4
LOSS = keras.losses.CategoricalCrossentropy(from_logits=True)


def soft_batch(seed=2):
    """A mixed batch: inputs and soft labels, as Mixup produces them."""
    rng = np.random.default_rng(seed + 100)
    x = rng.normal(size=(N, D)).astype("float32")
    y = np.eye(C)[rng.integers(0, C, N)]
    lam = 0.7
    perm = rng.permutation(N)
    return (lam * x + (1 - lam) * x[perm]).astype("float32"), (
        lam * y + (1 - lam) * y[perm]
    ).astype("float32")


def relative_error(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


CONFLICT_BATCH, AGREEING_BATCH = 2, 0  # seeds of soft_batch where dgmix does / does not conflict

REFERENCE_CASES = [
    (method, adaptive, gamma, batch, keep_first_pass)
    for method in kg.METHODS
    for adaptive in (False, True)
    for gamma in ((0.25, 0.5, 0.8) if method in gradients.PARTITIONED_METHODS else (0.5,))
    for batch in (CONFLICT_BATCH, AGREEING_BATCH)
    # The memory-lean step of bgmix/dgmix must compute the same update.
    for keep_first_pass in ((True, False) if method in gradients.PARTITIONED_METHODS else (True,))
]


@pytest.mark.parametrize("method,adaptive,gamma,batch,keep_first_pass", REFERENCE_CASES)
def test_matches_numpy_reference(method, adaptive, gamma, batch, keep_first_pass):
    model = linear_model(classes=C, normal_weights=True)
    x, y = soft_batch(batch)
    before = [v.numpy().copy() for v in model.weights]
    w, b = [t.astype(np.float64) for t in before]

    grads, stats = kg.update_gradients(
        model,
        x,
        y,
        loss=LOSS,
        method=method,
        rho=0.3,
        sensitive_fraction=gamma,
        adaptive=adaptive,
        eta=0.01,
        keep_first_pass=keep_first_pass,
    )
    gw, gb, ref_stats = ref.update(
        method,
        w,
        b,
        x.astype(np.float64),
        y.astype(np.float64),
        rho=0.3,
        gamma=gamma,
        adaptive=adaptive,
        eta=0.01,
    )

    assert relative_error(grads[0], gw) < 1e-4
    assert relative_error(grads[1], gb) < 1e-4
    for name, value in ref_stats.items():
        assert stats[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # The perturbed evaluation never writes the weights.
    for variable, value in zip(model.weights, before):
        assert np.array_equal(variable.numpy(), value)


def test_dgmix_conflict_case_is_exercised():
    """The reference batches must cover both dgmix branches, or its check above is weak."""
    model = linear_model(classes=C, normal_weights=True)
    for batch, conflict in [(CONFLICT_BATCH, 1.0), (AGREEING_BATCH, 0.0)]:
        x, y = soft_batch(batch)
        _, stats = kg.update_gradients(model, x, y, loss=LOSS, method="dgmix", rho=0.3)
        assert stats["conflict"] == conflict


def flat_grads(grads):
    return np.concatenate([np.ravel(g) for g in grads])


def grads_of(method, **kwargs):
    model = linear_model(classes=C, normal_weights=True)
    x, y = soft_batch()
    grads, _ = kg.update_gradients(model, x, y, loss=LOSS, method=method, **kwargs)
    return flat_grads(grads)


@pytest.mark.parametrize(
    "method,plain", [("sam", "erm"), ("gmix", "mixup"), ("bgmix", "mixup"), ("dgmix", "mixup")]
)
def test_rho_zero_is_the_unperturbed_method(method, plain):
    perturbed, unperturbed = grads_of(method, rho=0.0), grads_of(plain)
    if method in gradients.PARTITIONED_METHODS:
        # The two subset gradients sum in another order than the full batch's:
        # equal up to float32 rounding, not bit for bit.
        np.testing.assert_allclose(perturbed, unperturbed, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(perturbed, unperturbed)


@pytest.mark.parametrize("method", ["bgmix", "dgmix"])
def test_gamma_one_is_gmix(method):
    np.testing.assert_allclose(
        grads_of(method, sensitive_fraction=1.0), grads_of("gmix"), rtol=1e-6, atol=1e-7
    )


def test_bgmix_gamma_zero_is_mixup():
    np.testing.assert_array_equal(grads_of("bgmix", sensitive_fraction=0.0), grads_of("mixup"))


def test_dgmix_equals_bgmix_without_conflict():
    """Find a batch where g_sharp and g_flat agree, and check dgmix == bgmix there."""
    model = linear_model(classes=C, normal_weights=True)
    x, y = soft_batch()
    # A tiny rho keeps g_sharp close to the full-batch gradient direction on
    # a batch of near-duplicate examples, so the two subsets agree.
    x = np.repeat(x[:1], N, axis=0) + 0.01 * np.random.default_rng(3).normal(size=(N, D)).astype(
        "float32"
    )
    y = np.repeat(y[:1], N, axis=0)
    g_b, s_b = kg.update_gradients(model, x, y, loss=LOSS, method="bgmix", rho=0.01)
    g_d, s_d = kg.update_gradients(model, x, y, loss=LOSS, method="dgmix", rho=0.01)
    assert s_d["conflict"] == 0.0 and s_d["grad_cosine"] > 0
    np.testing.assert_allclose(flat_grads(g_d), flat_grads(g_b), rtol=1e-6, atol=1e-7)


def test_dgmix_never_opposes_flat_gradient():
    model = linear_model(classes=C, normal_weights=True)
    x, y = soft_batch()
    grads, stats = kg.update_gradients(model, x, y, loss=LOSS, method="dgmix", rho=0.3)
    assert stats["conflict"] == 1.0
    n = len(x)
    w, b = [v.numpy().astype(np.float64) for v in model.weights]
    l0 = ref.per_example_losses(w, b, x, y)
    ew, eb = ref.eps_of(w, b, *ref.subset_grad(w, b, x, y, np.ones(n), n), 0.3, False, 0.01)
    mask = ref.sharp_mask(ref.per_example_losses(w + ew, b + eb, x, y) - l0, 0.5)
    g_flat = ref.flat(*ref.subset_grad(w, b, x, y, 1 - mask, n))
    g_sharp = ref.flat(*ref.subset_grad(w + ew, b + eb, x, y, mask, n))
    assert g_sharp @ g_flat < 0  # the conflict is real
    assert flat_grads(grads) @ g_flat >= -1e-7


def test_zero_gradient_gives_zero_eps():
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, kernel_initializer="zeros")])
    x = np.zeros((N, D), "float32")
    y = np.full((N, C), 1.0 / C, "float32")  # uniform labels at uniform predictions: g = 0
    grads, stats = kg.update_gradients(model, x, y, loss=LOSS, method="dgmix")
    assert stats["eps_norm"] == 0.0
    assert np.all(np.isfinite(flat_grads(grads)))


def test_regularizers_are_evaluated_at_w_and_added_once():
    keras.utils.set_random_seed(0)
    l2 = 0.1
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(C, kernel_regularizer=keras.regularizers.L2(l2))]
    )
    plain = linear_model(classes=C, normal_weights=True)
    model.set_weights(plain.get_weights())
    x, y = soft_batch()
    w = plain.get_weights()[0]
    for method in ["erm", "gmix", "dgmix"]:
        with_reg, stats = kg.update_gradients(model, x, y, loss=LOSS, method=method)
        without, stats0 = kg.update_gradients(plain, x, y, loss=LOSS, method=method)
        np.testing.assert_allclose(with_reg[0] - without[0], 2 * l2 * w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(with_reg[1], without[1], rtol=1e-6)
        assert stats["loss"] == pytest.approx(stats0["loss"] + l2 * np.sum(w**2), rel=1e-5)


def test_sample_weights_scale_each_example():
    model = linear_model(classes=C, normal_weights=True)
    x, y = soft_batch()
    weights = np.zeros(N, "float32")
    weights[: N // 2] = 2.0
    grads, _ = kg.update_gradients(model, x, y, loss=LOSS, method="gmix", sample_weight=weights)
    w, b = [v.numpy().astype(np.float64) for v in model.weights]
    # Reference: l_i weighted, mean over the whole batch.
    n = N
    gw, gb = ref.subset_grad(w, b, x, y, weights.astype(np.float64), n)
    ew, eb = ref.eps_of(w, b, gw, gb, 0.05, False, 0.01)
    gw2, gb2 = ref.subset_grad(w + ew, b + eb, x, y, weights.astype(np.float64), n)
    assert relative_error(grads[0], gw2) < 1e-4 and relative_error(grads[1], gb2) < 1e-4


def test_partition_ties_take_lower_index_first():
    from keras_gmix import partition

    mask = partition.sharp_mask(np.array([1.0, 3.0, 3.0, 0.0, 3.0], "float32"), 0.4)
    np.testing.assert_array_equal(np.asarray(mask), [0, 1, 1, 0, 0])
    assert int(partition.sharp_count(10, 0.3)) == 3
    assert int(partition.sharp_count(7, 0.5)) == 4


def bn_dropout_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(C),
        ]
    )


@pytest.mark.parametrize("method", gradients.PARTITIONED_METHODS)
@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0])
def test_memory_lean_step_is_the_same_step_with_batchnorm_and_dropout(method, gamma):
    """keep_first_pass=False: the same update, statistics, predictions and
    BatchNorm/RNG state as the kept tape, in a model whose passes couple the
    examples (batch statistics) and draw dropout masks; eagerly and in a graph."""
    model = bn_dropout_model()
    x, y = soft_batch(CONFLICT_BATCH)
    loss_fn = kg.losses.per_example_loss(LOSS)

    def step(keep_first_pass):
        return gradients.compute_update(
            model,
            x,
            y,
            loss_fn,
            method=method,
            rho=0.3,
            sensitive_fraction=gamma,
            keep_first_pass=keep_first_pass,
        )

    for run in (step, traced(step)):
        kept, lean = run(True), run(False)
        assert 0 < float(kept.stats["sharpness"])  # a real perturbation
        for a, b in zip(lean.grads, kept.grads):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
        for name, value in kept.stats.items():
            np.testing.assert_allclose(lean.stats[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
        for a, b in zip(lean.non_trainable + [lean.y_pred], kept.non_trainable + [kept.y_pred]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(lean.sensitivity, kept.sensitivity, rtol=1e-5, atol=1e-7)


def test_keep_first_pass_must_be_a_bool():
    with pytest.raises(ValueError, match="keep_first_pass"):
        kg.update_gradients(
            linear_model(classes=C, normal_weights=True),
            *soft_batch(),
            loss=LOSS,
            keep_first_pass="no",
        )
