"""Efficient schedules (SPEC.md section 4b): perturb_every, reuse_scale,
perturb_probability and the late phase perturb_from."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import gradients, perturb_schedule
from tests import numpy_reference as ref
from tests.helpers.common import (
    CountingModel,
    D,
    N,
    assert_trained_to,
    compiled,
    data,
    dense_bn_model,
    linear_model,
    step_inputs,
    weights_after_sgd_step,
)

LOSS = keras.losses.CategoricalCrossentropy(from_logits=True)


def train_steps(model, steps, seed=0):
    """`steps` single-batch fit steps on fresh batches; returns each step's logs."""
    logs = []
    for step in range(steps):
        x, y = data(seed=seed + step)
        logs.append(model.train_on_batch(x, y, return_dict=True))
    return logs


# -- the schedule itself -------------------------------------------------------


def test_every_kth_step_is_full():
    full = [bool(perturb_schedule.is_full_step(t, seed=3, perturb_every=4)) for t in range(12)]
    assert full == [t % 4 == 0 for t in range(12)]


def test_random_schedule_is_a_function_of_seed_and_step():
    def draw(seed):
        return [
            bool(perturb_schedule.is_full_step(t, seed, perturb_probability=0.3))
            for t in range(400)
        ]

    first = draw(7)
    assert first == draw(7)  # a resumed run or another replica asks again: same answer
    assert first != draw(8)
    assert abs(np.mean(first) - 0.3) < 0.06  # 400 Bernoulli(0.3) draws: std 0.023


@pytest.mark.tensorflow_only  # a tf.function; JAX jits every step (test_jax)
def test_random_schedule_agrees_in_graph_mode_and_under_xla():
    steps = tf.range(64, dtype=tf.int64)
    eager = [bool(perturb_schedule.is_full_step(t, 5, perturb_probability=0.5)) for t in range(64)]
    xla = tf.function(
        lambda s: tf.map_fn(
            lambda t: perturb_schedule.is_full_step(t, 5, perturb_probability=0.5),
            s,
            fn_output_signature=tf.bool,
        ),
        jit_compile=True,
    )(steps)
    assert eager == [bool(v) for v in xla.numpy()]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(perturb_from=7),  # k = 1: every step from s on
        dict(perturb_from=7, perturb_every=3),  # s not a multiple of k: first full t = 9
        dict(perturb_from=6, perturb_every=3),  # s a multiple of k: first full t = s
        dict(perturb_from=7, perturb_probability=0.5),
    ],
)
def test_late_phase_is_cheap_before_s_and_the_schedule_from_s_on(kwargs):
    s = kwargs["perturb_from"]
    k = kwargs.get("perturb_every", 1)
    p = kwargs.get("perturb_probability", 1.0)
    without = [
        bool(perturb_schedule.is_full_step(t, 3, perturb_every=k, perturb_probability=p))
        for t in range(40)
    ]
    full = [bool(perturb_schedule.is_full_step(t, 3, **kwargs)) for t in range(40)]
    # Independent reference: the plain rule (t mod k, or the (seed, t) draw)
    # from step s on, nothing before.
    assert full == [t >= s and (t % k == 0 if p == 1 else without[t]) for t in range(40)]
    assert any(full[s:])


@pytest.mark.parametrize(
    "value,total,step",
    [
        (0, 100, 0),
        (0.0, 100, 0),
        (0.875, 1600, 1400),
        (0.875, 1001, 875),
        (0.5, 3, 1),
        (250, 100, 250),
    ],
)
def test_a_fraction_of_the_run_resolves_to_a_step(value, total, step):
    resolved = perturb_schedule.resolve_perturb_from(value, total)
    assert resolved == step and isinstance(resolved, int)


@pytest.mark.parametrize("value", [-1, 1.5, 2.25, float("nan"), True, "0.875"])
def test_bad_perturb_from_settings(value):
    with pytest.raises(ValueError, match="perturb_from"):
        perturb_schedule.check_perturb_from_setting(value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(perturb_from=-1), "perturb_from"),
        # The model takes a step; runs (TrainConfig) resolve fractions.
        (dict(perturb_from=0.875), "perturb_from"),
        (dict(perturb_from=True), "perturb_from"),
        # MirroredStrategy's synced perturbation: TensorFlow's (JAX's one
        # global step runs any schedule).
        pytest.param(
            dict(perturb_from=10, sync_perturbation=True),
            "perturb_from > 0",
            marks=pytest.mark.tensorflow_only,
        ),
        (dict(perturb_every=0), "perturb_every"),
        (dict(perturb_every=2.5), "perturb_every"),
        (dict(perturb_every=True), "perturb_every"),
        (dict(perturb_probability=0.0), "perturb_probability"),
        (dict(perturb_probability=1.5), "perturb_probability"),
        (dict(perturb_probability=float("nan")), "perturb_probability"),
        (dict(reuse_scale=-0.1), "reuse_scale"),
        (dict(reuse_scale=float("inf")), "reuse_scale"),
        (dict(perturb_every=5, perturb_probability=0.2), "cannot both be set"),
        pytest.param(
            dict(perturb_every=5, sync_perturbation=True),
            "sync_perturbation",
            marks=pytest.mark.tensorflow_only,
        ),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.GMixModel(dense_bn_model(), method="gmix", **kwargs)


def test_numpy_integers_and_floats_are_accepted():
    model = kg.GMixModel(
        dense_bn_model(), perturb_every=np.int64(3), perturb_probability=np.float32(1.0)
    )
    assert model.scheduled


def test_reuse_arithmetic_limits():
    """v = u when g == 0; a cheap step is just g while nothing is stored; and
    otherwise the added part is orthogonal to g with norm reuse_scale * ||g||."""
    u = [np.array([1.0, 2.0], "float32"), np.array([3.0], "float32")]
    zero = [np.zeros([2], "float32"), np.zeros([1], "float32")]
    flat = lambda ts: np.concatenate([keras.ops.convert_to_numpy(t).ravel() for t in ts])  # noqa: E731
    np.testing.assert_array_equal(flat(perturb_schedule.orthogonal_part(u, zero)), flat(u))
    g = [np.array([0.5, -1.0], "float32"), np.array([2.0], "float32")]
    np.testing.assert_array_equal(flat(perturb_schedule.reuse_update(g, zero, 0.7)), flat(g))
    v = perturb_schedule.orthogonal_part(u, g)
    assert abs(flat(v) @ flat(g)) < 1e-5
    added = flat(perturb_schedule.reuse_update(g, v, 0.7)) - flat(g)
    np.testing.assert_allclose(np.linalg.norm(added), 0.7 * np.linalg.norm(flat(g)), rtol=1e-6)


# -- what a step computes -------------------------------------------------------


@pytest.mark.parametrize("method", kg.METHODS)
def test_defaults_reproduce_every_method_bit_for_bit(method):
    """k = 1 and p = 1 (any reuse_scale) are the method of section 4, and a
    schedule whose every step is full runs the same arithmetic."""
    plain = compiled(method)
    explicit = compiled(
        method, perturb_every=1, perturb_probability=1.0, reuse_scale=0.7, perturb_from=0
    )
    # p just below 1: the schedule's branch is taken, and every one of these
    # steps draws "full" (checked through the full_step log).
    branched = compiled(method, perturb_probability=1.0 - 1e-7)
    logs = [train_steps(model, 4) for model in (plain, explicit, branched)]
    if method in gradients.PERTURBED_METHODS:
        assert [step["full_step"] for step in logs[2]] == [1.0] * 4
    for model in (explicit, branched):
        for a, b in zip(model.inner.weights, plain.inner.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "method,cheap_as", [("sam", "erm"), ("gmix", "mixup"), ("bgmix", "mixup"), ("dgmix", "mixup")]
)
def test_a_cheap_step_without_reuse_is_the_unperturbed_methods_step(method, cheap_as):
    model = compiled(method, optimizer=keras.optimizers.SGD(0.5), perturb_every=3)
    train_steps(model, 1)  # step 0: full
    reference = dense_bn_model()
    # Weights and BatchNorm statistics after step 0.
    reference.set_weights(model.inner.get_weights())
    x, y = data(seed=1)
    x_in, y_in = step_inputs(model, x, y, step=2)
    expected = weights_after_sgd_step(reference, x_in, y_in, cheap_as, learning_rate=0.5)
    logs = model.train_on_batch(x, y, return_dict=True)  # step 1: cheap
    assert logs["full_step"] == 0.0  # train_on_batch resets the metrics: this step alone
    assert_trained_to(model, expected)


def flat_weights(model):
    w, b = (v.numpy().astype(np.float64) for v in model.inner.trainable_variables)
    return w, b


@pytest.mark.parametrize(
    "method,options",
    [
        ("gmix", {}),
        ("dgmix", {}),
        # The memory-lean step of the partitioned methods, under a schedule.
        ("bgmix", {"keep_first_pass": False}),
        ("dgmix", {"keep_first_pass": False}),
    ],
)
def test_stored_direction_and_cheap_step_match_numpy(method, options):
    """Step 0 (full) stores v = u - <u, g>/||g||^2 g; step 1 (cheap) applies
    g + a ||g||/||v|| v: both checked against the NumPy reference."""
    reuse_scale, lr = 0.3, 1.0
    model = compiled(
        method,
        inner=linear_model(),
        optimizer=keras.optimizers.SGD(lr),
        perturb_every=2,
        reuse_scale=reuse_scale,
        rho=0.5,
        **options,
    )
    batches = [data(seed=s) for s in (0, 1)]
    mixed = [step_inputs(model, x, y, step=t + 1) for t, (x, y) in enumerate(batches)]
    to64 = lambda t: np.asarray(t, np.float64)  # noqa: E731

    w0, b0 = flat_weights(model)
    x0, y0 = map(to64, mixed[0])
    uw, ub, _ = ref.update(method, w0, b0, x0, y0, rho=0.5)
    gw, gb = ref.subset_grad(w0, b0, x0, y0, np.ones(N), N)
    v = ref.orthogonal_part(ref.flat(uw, ub), ref.flat(gw, gb))
    model.train_on_batch(*batches[0])
    stored = np.concatenate([d.numpy().ravel() for d in model.reuse_direction])
    assert np.linalg.norm(v) > 1e-3  # the update is not along g: a real test
    np.testing.assert_allclose(stored, v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([w0.ravel() - lr * uw.ravel(), b0 - lr * ub]),
        np.concatenate([a.ravel() for a in flat_weights(model)]),
        rtol=1e-5,
        atol=1e-6,
    )

    w1, b1 = flat_weights(model)
    x1, y1 = map(to64, mixed[1])
    g1 = ref.flat(*ref.subset_grad(w1, b1, x1, y1, np.ones(N), N))
    update = ref.reused_update(g1, v, reuse_scale)
    model.train_on_batch(*batches[1])
    w2, b2 = flat_weights(model)
    np.testing.assert_allclose(
        ref.flat(w2, b2), ref.flat(w1, b1) - lr * update, rtol=1e-5, atol=1e-6
    )
    # v is left as it was by a cheap step.
    np.testing.assert_allclose(
        np.concatenate([d.numpy().ravel() for d in model.reuse_direction]), v, rtol=1e-4, atol=1e-6
    )


# On JAX a conditional traces both branches, and a jitted step's passes are
# not counted per call: there test_jax checks that the step of each kind is
# chosen on the host.
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("reuse_scale", [0.0, 0.5])
@pytest.mark.parametrize("method,full", [("sam", (2, 2)), ("gmix", (2, 2)), ("dgmix", (2, 3))])
def test_a_cheap_step_makes_one_forward_and_one_backward_pass(method, full, reuse_scale):
    inner = CountingModel()
    inner(np.zeros((1, D), "float32"))
    x, y = data(n=8)
    model = compiled(method, inner=inner, perturb_every=2, reuse_scale=reuse_scale)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    counts = []
    for _ in range(3):  # steps 0 (full, also traced symbolically), 1 (cheap), 2 (full)
        inner.forward_calls = inner.backward_calls = 0
        model.train_on_batch(x, y)
        counts.append((inner.forward_calls, inner.backward_calls))
    assert counts[1:] == [(1, 1), full]


def test_perturbed_statistics_are_averaged_over_full_steps_only():
    # sam with rho = 0.05: eps_norm is 0.05 on every full step; averaged over
    # all steps of k = 2 it would read 0.025.
    model = compiled("sam", perturb_every=2, rho=0.05)
    history = model.fit(*data(n=4 * N), batch_size=N, epochs=1, verbose=0, shuffle=False).history
    assert history["full_step"] == [0.5]
    np.testing.assert_allclose(history["eps_norm"], [0.05], rtol=1e-5)


def test_perturb_from_zero_keeps_a_schedule_bit_for_bit():
    """s = 0 is the schedule of section 4b as it was, step for step."""
    models = [
        compiled("dgmix", perturb_every=3, reuse_scale=0.3, **extra)
        for extra in ({}, {"perturb_from": 0})
    ]
    logs = [train_steps(model, 5) for model in models]
    assert logs[0] == logs[1]
    for a, b in zip(models[0].weights, models[1].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow  # several fits
@pytest.mark.parametrize("method,cheap_as", [("gmix", "mixup"), ("dgmix", "mixup"), ("sam", "erm")])
def test_fit_with_a_late_phase(method, cheap_as):
    """4 steps per epoch, s = 6: epoch 0 all cheap, epoch 1 half full, epoch 2
    all full; and the steps before s train exactly as the unperturbed method."""
    x, y = data(n=4 * N)
    late = compiled(method, perturb_from=6)
    plain = compiled(cheap_as)  # same seed, same mixing draws per step
    history = late.fit(x, y, batch_size=N, epochs=3, verbose=0, shuffle=False).history
    assert history["full_step"] == [0.0, 0.5, 1.0]
    assert history["eps_norm"][0] == 0.0 and history["eps_norm"][2] > 0
    # Until step s the late model followed the cheap method's trajectory.
    late_until_s = compiled(method, perturb_from=6)
    late_until_s.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    plain.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(late_until_s.inner.weights, plain.inner.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_non_perturbed_methods_ignore_the_schedule():
    model = compiled("mixup", perturb_every=5)
    assert not model.scheduled
    assert "full_step" not in train_steps(model, 1)[0]


# -- modes, precision, serialization, resume ----------------------------------


@pytest.mark.slow  # several fits
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(perturb_every=2, reuse_scale=0.3),
        dict(perturb_probability=0.5, reuse_scale=0.3),
        dict(perturb_probability=0.5, perturb_from=3),
    ],
)
def test_eager_graph_and_xla_agree_with_a_schedule(kwargs):
    """Eagerly and in graph mode the step chooses its kind with a
    conditional; compiled with XLA, each kind is compiled alone and chosen
    outside it (also with several steps per execution): the same steps."""
    x, y = data(n=64)
    histories, weights = [], []
    modes = ["eager", "graph", "xla", "xla_3_steps"]
    if keras.backend.backend() == "tensorflow":
        modes.append("jit_gradients")
    for mode in modes:
        model = compiled(
            "dgmix", inner=dense_bn_model(), jit_gradients=mode == "jit_gradients", **kwargs
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=mode == "eager",
            jit_compile=mode.startswith("xla"),
            steps_per_execution=3 if mode == "xla_3_steps" else 1,
        )
        histories.append(model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history)
        weights.append(model.inner.get_weights())
    assert 0.0 < np.mean(histories[0]["full_step"]) < 1.0  # both kinds are made
    for history, other in zip(histories[1:], weights[1:]):
        for key in histories[0]:
            np.testing.assert_allclose(
                history[key], histories[0][key], rtol=1e-5, atol=1e-6, err_msg=key
            )
        for a, b in zip(other, weights[0]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_compiled_schedule_follows_an_accumulating_optimizers_step_counter():
    """With gradient accumulation the optimizer's step counter is a quotient
    of its iterations: a step compiled with XLA (its kind chosen outside
    XLA) makes the steps an eager one makes."""
    x, y = data(n=128)
    runs = []
    for eager in (True, False):
        model = compiled("gmix", perturb_every=2)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=eager,
            jit_compile=not eager,
        )
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history
        runs.append((history["full_step"], model.inner.get_weights()))
    (eager_full, eager_weights), (xla_full, xla_weights) = runs
    assert eager_full == xla_full == [0.5]
    for a, b in zip(xla_weights, eager_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # several fits
def test_mixed_precision_with_a_schedule():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = kg.GMixModel(
            dense_bn_model(), method="dgmix", seed=5, perturb_every=2, reuse_scale=0.3
        )
        model.compile(
            optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        history = model.fit(*data(n=64), batch_size=16, epochs=2, verbose=0).history
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert history["full_step"] == [0.5, 0.5]
    direction = np.concatenate([d.numpy().ravel() for d in model.reuse_direction])
    assert np.all(np.isfinite(direction)) and np.linalg.norm(direction) > 0
    assert all(np.all(np.isfinite(w)) for w in model.inner.get_weights())


def test_config_and_keras_file_round_trip(tmp_path):
    model = compiled("gmix", perturb_every=3, reuse_scale=0.2)
    train_steps(model, 2)
    config = model.get_config()
    assert (config["perturb_every"], config["reuse_scale"], config["perturb_probability"]) == (
        3,
        0.2,
        1.0,
    )
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.perturb_every, loaded.reuse_scale) == (3, 0.2)
    late = compiled("gmix", perturb_from=1200, perturb_every=2)
    assert late.get_config()["perturb_from"] == 1200
    assert kg.GMixModel.from_config(late.get_config()).perturb_from == 1200
    for a, b in zip(loaded.reuse_direction, model.reuse_direction):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The reloaded model goes on exactly as the original.
    for m in (model, loaded):
        m.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    x, y = data(seed=9)
    model.train_on_batch(x, y)
    loaded.train_on_batch(x, y)
    for a, b in zip(model.inner.weights, loaded.inner.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow  # several fits
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(perturb_every=3, reuse_scale=0.3),
        dict(perturb_probability=0.4, reuse_scale=0.3),
        # Saved at step 3, the late phase starts at step 4: the switch falls
        # in the resumed part.
        dict(perturb_from=4),
        dict(perturb_from=4, perturb_every=2, reuse_scale=0.3),
    ],
)
def test_a_checkpointed_and_restored_run_continues_bit_for_bit(tmp_path, kwargs):
    """Which steps are full (from the optimizer's step counter) and v survive a resume."""
    straight = compiled("dgmix", **kwargs)
    straight_logs = train_steps(straight, 6)
    first = compiled("dgmix", **kwargs)
    train_steps(first, 3)
    kg.checkpoint.save(first, str(tmp_path / "backup"), epochs_done=1)
    resumed = compiled("dgmix", **kwargs)
    train_steps(resumed, 1, seed=50)  # other state, overwritten by the restore
    kg.checkpoint.restore(resumed, str(tmp_path / "backup"))
    resumed_logs = train_steps(resumed, 3, seed=3)
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # train_on_batch resets the metrics per call: full_step is that step's value.
    assert [step["full_step"] for step in resumed_logs] == [
        step["full_step"] for step in straight_logs[3:]
    ]
