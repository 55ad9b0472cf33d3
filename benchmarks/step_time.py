"""Step time of every G-Mix method against ERM, a naive SAM and tf-keras.

Everything is timed inside one process, after warm-up, on the compiled train
function (`model.train_function` on a tf.data iterator, the call `fit` makes
per step), with the configurations interleaved: each round runs K steps of
every configuration of a model, in a shuffled order, and several rounds
follow. Ratios are taken within a round (method / ERM of the same model,
BatchNorm and jit setting) and their median over rounds is reported, so that
the load of other processes on the machine mostly cancels.

Rows per model, for stock Keras and fused (`keras_gmix.layers`)
BatchNormalization and for jit_compile off and on:

- `keras fit`: the bare model compiled with Keras 3 (no GMixModel);
- `erm` ... `dgmix`: `keras_gmix.GMixModel(method=...)`;
- `naive sam`: `benchmarks/naive_sam.py`, SAM by assign_add / assign_sub;
- `gmix:k5`, `dgmix:k5-r0.3` and the like: a method with an efficient
  schedule (SPEC.md section 4b), `perturb_every=5` (and `reuse_scale=0.3`). Its steps are not all alike, so its
  per-round time is the amortized one, (full + (k - 1) * cheap) / k, from
  the round's median full step and median cheap step (the step counter says
  which is which); give it at least k steps per round;

and, on the peer model (ResNet-20), tf-keras plain fit and tf-keras
`SharpnessAwareMinimization` (rho 0.05) on the same architecture.

Peak memory: with `--allocator bfc` (the default) TensorFlow's CPU allocator
is the BFC allocator, whose statistics `tf.config.experimental.get_memory_info`
reads (the default CPU allocator keeps none). For each configuration the
table gives the peak bytes in use during its steps above the bytes in use
before them: the step's activations, gradients and temporaries, without the
resident weights and optimizer state. The process' RSS high-water mark is
reported too.

Usage: the committed results are two runs, the second merged into the same
files (benchmarks/README.md):

    python benchmarks/step_time.py --models small_cnn:1x4,resnet20:1x5 --jit off
    python benchmarks/step_time.py --models small_cnn:1x3,preact_resnet18:1x2 \
        --model-options small_cnn:on:fused --model-options preact_resnet18:off:fused \
        --no-keras-fit --no-naive --merge

A quick run, printed only:

    python benchmarks/step_time.py --models resnet20:1x2 --bn fused --jit off --no-write

`--report` rewrites OUTPUT.md from OUTPUT.json without measuring.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

MODELS = ("small_cnn", "resnet8", "resnet20", "preact_resnet18")
KERAS_FIT = "keras fit"
NAIVE_SAM = "naive sam"
TFK_FIT = "tf-keras fit"
TFK_SAM = "tf-keras SAM"
PEER_BN = "tf-keras"

# Targets (issue 6: stock or fused; issue 9: fused), as ratios to our erm.
ISSUE6_LIMITS = {"sam": 2.1, "gmix": 2.1, "bgmix": 2.7, "dgmix": 2.7}
ISSUE9_LIMITS = {"sam": 2.05, "gmix": 2.05, "bgmix": 2.5, "dgmix": 2.5}
# Issue 19's targets are on the CPU-time ratio.
ISSUE19_LIMITS = {"gmix:k5": 1.25, "dgmix:k5": 1.35}


def known_methods():
    """`keras_gmix.gradients.METHODS`, imported on first use.

    Importing keras_gmix loads TensorFlow, which must wait until
    `set_environment` has chosen the CPU allocator; `--help` and `--report`
    stay fast without it.
    """
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from keras_gmix.gradients import METHODS

    return METHODS


def set_environment(args):
    """The TensorFlow settings that must precede its import."""
    if args.allocator == "bfc":
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_method(spec):
    """`"gmix:k5"` -> ("gmix", {"perturb_every": 5}); `"dgmix:k5-r0.3"` adds
    `reuse_scale=0.3`; `"gmix"` -> ("gmix", {}). The part after the colon
    names a schedule as generalization.py does (`parse_variant`), with k > 1:
    the random schedule (pP) is not timed, its full steps are not known
    ahead."""
    from generalization_plan import parse_variant

    name, _, schedule = spec.partition(":")
    methods = known_methods()
    try:
        if name not in methods:
            raise ValueError(name)
        options = parse_variant(f"{name}-{schedule}")[1] if schedule else {}
        # Timed: every k-th step full (k >= 2), or all steps alike with an
        # option of the step (`lean`); not the random or late schedules.
        every_kth = options.get("perturb_every", 1) >= 2 and not (
            {"perturb_probability", "perturb_from"} & set(options)
        )
        if schedule and not (every_kth or set(options) <= {"keep_first_pass"}):
            raise ValueError(schedule)
    except ValueError:
        raise ValueError(
            f"unknown method {spec!r}; choose from {methods}, optionally with ':kK', "
            "':kK-rA' (k >= 2) or ':lean' (e.g. gmix:k5, dgmix:k5-r0.3, dgmix:lean)"
        ) from None
    return name, options


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default="small_cnn,resnet20",
        help="comma-separated models; NAME:KxR overrides steps x rounds for "
        "that model (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=1, help="steps per configuration per round (K)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (R)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed steps after the first fit step (which traces, compiles and runs "
        "one step; the timing iterator reuses its function) (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods (default: all of keras_gmix.gradients.METHODS)",
    )
    parser.add_argument("--jit", default="off,on", help="off, on, or off,on")
    parser.add_argument("--bn", default="stock,fused", help="stock, fused, or stock,fused")
    parser.add_argument(
        "--model-options",
        action="append",
        default=[],
        metavar="NAME:JIT:BN",
        help="restrict a model to some jit/bn settings, e.g. "
        "preact_resnet18:off:stock,fused (repeatable)",
    )
    parser.add_argument(
        "--no-keras-fit", action="store_true", help="skip the bare Keras 3 model rows"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive SAM rows")
    parser.add_argument(
        "--peer-model", default="resnet20", help="model that gets the tf-keras rows ('' for none)"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allocator",
        choices=("bfc", "default"),
        default="bfc",
        help="TensorFlow CPU allocator; bfc gives per-configuration peak memory",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(HERE, "results", "step_time"),
        help="writes OUTPUT.md and OUTPUT.json",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--report",
        action="store_true",
        help="measure nothing: rewrite OUTPUT.md (and the targets) from OUTPUT.json",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of OUTPUT.json that this run does not measure (other "
        "models or settings, measured by an earlier run) and write the union",
    )
    args = parser.parse_args(argv)
    if args.report:  # the report reads OUTPUT.json: no methods to check, no TensorFlow
        args.method_list = []
    else:
        set_environment(args)
        methods = args.methods if args.methods is not None else ",".join(known_methods())
        args.method_list = [m for m in methods.split(",") if m]
    for method in args.method_list:
        try:
            parse_method(method)
        except ValueError as error:
            parser.error(str(error))
    if not args.report and "erm" not in args.method_list:
        parser.error("--methods must include erm (the reference of every ratio)")
    args.jit_list = [{"off": False, "on": True}[j] for j in args.jit.split(",") if j]
    args.bn_list = [b for b in args.bn.split(",") if b]
    if set(args.bn_list) - {"stock", "fused"}:
        parser.error("--bn takes stock and/or fused")
    args.model_specs = []
    for spec in args.models.split(","):
        if not spec:
            continue
        name, _, override = spec.partition(":")
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {MODELS}")
        steps, rounds = args.steps, args.rounds
        if override:
            steps, rounds = (int(v) for v in override.lower().split("x"))
        args.model_specs.append((name, steps, rounds))
    args.options = {}
    for option in args.model_options:
        name, jit, bn = option.split(":")
        args.options[name] = (
            [{"off": False, "on": True}[j] for j in jit.split(",")],
            bn.split(","),
        )
    return args


# -- the machine ---------------------------------------------------------------


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def git_commit():
    """The checkout's commit, and the package files that differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "keras_gmix"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in status if line.strip()]
    return commit + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


# -- configurations ------------------------------------------------------------


class Config:
    """One timed row: a model, a BatchNorm kind, a jit setting and a method."""

    def __init__(self, model, bn, jit, method):
        self.model, self.bn, self.jit, self.method = model, bn, jit, method
        # Rows other than GMixModel's (keras fit, naive sam, tf-keras) have no schedule.
        self.base_method, self.schedule = parse_method(method) if ":" in method else (method, {})
        self.perturb_every = self.schedule.get("perturb_every", 1)
        self.round_full = []  # per round: for each step, whether it was a full step
        self.train_model = None
        self.iterator = None
        self.first_call_s = None
        self.round_times = []  # per round: list of K wall-clock step times (s)
        self.round_cpu_times = []  # per round: list of K process CPU times (s)
        self.step_peak = None  # bytes above the resident ones
        self.last_loss = None

    @property
    def key(self):
        return (self.model, self.bn, self.jit, self.method)

    def __repr__(self):
        return f"{self.model}/{self.bn}/jit={'on' if self.jit else 'off'}/{self.method}"


def make_configs(model, args):
    jits, bns = args.options.get(model, (args.jit_list, args.bn_list))
    configs = []
    for jit in jits:
        for bn in bns:
            methods = ([] if args.no_keras_fit else [KERAS_FIT]) + list(args.method_list)
            if not args.no_naive:
                methods.append(NAIVE_SAM)
            configs += [Config(model, bn, jit, m) for m in methods]
        if model == args.peer_model:
            configs += [Config(model, PEER_BN, jit, m) for m in (TFK_FIT, TFK_SAM)]
    return configs


def make_data(args):
    import tensorflow as tf

    # A few distinct batches, cycled, so that no run memorizes one batch.
    num_batches = 4
    rng = tf.random.Generator.from_seed(args.seed)
    x = rng.normal([num_batches * args.batch_size, 32, 32, 3])
    y = rng.uniform([num_batches * args.batch_size], maxval=10, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).cache().repeat()


def build(config, args):
    """Builds and compiles the config's model; returns it (untraced)."""
    import keras

    import keras_gmix as kg
    from keras_gmix.models import build_model

    sys.path.insert(0, HERE)
    from naive_sam import NaiveSAM, tf_keras_resnet20

    if config.bn == PEER_BN:
        import tf_keras

        tf_keras.utils.set_random_seed(args.seed)
        model = tf_keras_resnet20()
        if config.method == TFK_SAM:
            model = tf_keras.models.experimental.SharpnessAwareMinimization(model, rho=args.rho)
        model.compile(
            optimizer=tf_keras.optimizers.SGD(args.learning_rate, momentum=0.9),
            loss="sparse_categorical_crossentropy",
            jit_compile=config.jit,
        )
        return model

    keras.utils.set_random_seed(args.seed)
    batchnorm = (
        kg.layers.BatchNormalization if config.bn == "fused" else keras.layers.BatchNormalization
    )
    inner = build_model(config.model, input_shape=(32, 32, 3), batchnorm=batchnorm)
    if config.method == KERAS_FIT:
        model = inner
    elif config.method == NAIVE_SAM:
        model = NaiveSAM(inner, rho=args.rho)
    else:
        model = kg.GMixModel(
            inner,
            method=config.base_method,
            rho=args.rho,
            alpha=1.0,
            seed=args.seed,
            **config.schedule,
        )
    model.compile(
        optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=config.jit,
    )
    return model


def prepare(config, dataset, args):
    """Builds, runs fit for one step (symbolic build, tracing) and warms up."""
    model = build(config, args)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
    config.first_call_s = time.perf_counter() - start
    config.train_model = model
    config.iterator = iter(dataset)
    config.warm_step_s = None
    for _ in range(args.warmup):
        start = time.perf_counter()
        run_step(config)
        config.warm_step_s = time.perf_counter() - start


def run_step(config):
    logs = config.train_model.train_function(config.iterator)
    config.last_loss = float(logs["loss"])  # blocks until the step is done


# -- measuring -----------------------------------------------------------------


class Memory:
    """Peak bytes of TensorFlow's CPU allocator (BFC only), or nothing."""

    def __init__(self, enabled):
        import tensorflow as tf

        self.tf = tf
        self.enabled = enabled
        if enabled:
            try:
                tf.config.experimental.get_memory_info("CPU:0")
            except ValueError:
                self.enabled = False

    def start(self):
        if not self.enabled:
            return None
        self.tf.config.experimental.reset_memory_stats("CPU:0")
        return self.tf.config.experimental.get_memory_info("CPU:0")["current"]

    def stop(self, base):
        if not self.enabled:
            return None
        return self.tf.config.experimental.get_memory_info("CPU:0")["peak"] - base


def time_block(config, steps, memory):
    base = memory.start()
    times, cpu_times, full = [], [], []
    for _ in range(steps):
        if config.perturb_every > 1:
            full.append(
                int(config.train_model.optimizer.iterations.numpy()) % config.perturb_every == 0
            )
        start, cpu_start = time.perf_counter(), time.process_time()
        run_step(config)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = memory.stop(base)
    if peak is not None:
        config.step_peak = max(config.step_peak or 0, peak)
    config.round_times.append(times)
    config.round_cpu_times.append(cpu_times)
    config.round_full.append(full)


def run_model(model, steps, rounds, args, dataset, memory, log):
    configs = make_configs(model, args)
    log(f"\n== {model}: {len(configs)} configurations, {rounds} rounds of {steps} steps")
    for config in configs:
        prepare(config, dataset, args)
        warm = (
            "" if config.warm_step_s is None else f", then {1000 * config.warm_step_s:.0f} ms/step"
        )
        log(f"  ready {config!r}: first call {config.first_call_s:.1f} s{warm}")
    rng = random.Random(args.seed)
    for r in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        start = time.perf_counter()
        for config in order:
            time_block(config, steps, memory)
        log(f"  round {r + 1}/{rounds}: {time.perf_counter() - start:.0f} s, load {load_average()}")
    for config in configs:  # free the models before the next group
        config.train_model = None
        config.iterator = None
    return configs


# -- summarizing ---------------------------------------------------------------


def median(values):
    return statistics.median(values) if values else None


def round_values(config, cpu=False):
    """Per round: the median step time, or with a schedule the amortized
    (full + (k - 1) * cheap) / k from the median full and cheap steps."""
    rounds = config.round_cpu_times if cpu else config.round_times
    if config.perturb_every == 1:
        return [median(times) for times in rounds]
    k = config.perturb_every
    values = []
    for times, full in zip(rounds, config.round_full):
        full_times = [t for t, f in zip(times, full) if f]
        cheap_times = [t for t, f in zip(times, full) if not f]
        if not full_times or not cheap_times:
            raise ValueError(
                f"{config!r}: a round needs full and cheap steps; time at least {k} steps per round"
            )
        values.append((median(full_times) + (k - 1) * median(cheap_times)) / k)
    return values


def round_ratios(a, b, cpu=False):
    """Per round: a's round value / b's round value (see `round_values`)."""
    return [x / y for x, y in zip(round_values(a, cpu), round_values(b, cpu))]


def paired_ratio(a, b, cpu=False):
    """Median over rounds of (a's round median / b's round median)."""
    if a is None or b is None:
        return None
    return median(round_ratios(a, b, cpu))


def summarize(configs, run):
    """One JSON row per configuration; ratios are within this run."""
    by_key = {c.key: c for c in configs}
    rows = []
    for c in configs:
        wall = [t for block in c.round_times for t in block]
        row = {
            "model": c.model,
            "batchnorm": c.bn,
            "jit_compile": c.jit,
            "method": c.method,
            "run": run,
            "median_ms": 1000 * median(round_values(c)),
            "cpu_median_ms": 1000 * median(round_values(c, cpu=True)),
            "round_medians_ms": [round(1000 * v, 1) for v in round_values(c)],
            "steps_timed": len(wall),
            "first_call_s": c.first_call_s,
            "step_peak_mb": None if c.step_peak is None else c.step_peak / 2**20,
            "final_loss": c.last_loss,
        }

        def ratio(name, other_key):
            other = by_key.get(other_key)
            if other is None or other is c:
                row[name] = None if other is None else 1.0
                return
            row[name] = paired_ratio(c, other)
            row[name + "_cpu"] = paired_ratio(c, other, cpu=True)
            row[name + "_rounds"] = [round(r, 3) for r in round_ratios(c, other)]

        if c.bn == PEER_BN:
            ratio("x_own_fit", (c.model, c.bn, c.jit, TFK_FIT))
        else:
            ratio("x_erm", (c.model, c.bn, c.jit, "erm"))
            ratio("x_keras_fit", (c.model, c.bn, c.jit, KERAS_FIT))
            if c.bn == "fused":
                ratio("fused_x_stock", (c.model, "stock", c.jit, c.method))
            if c.method == "sam":
                ratio("x_naive_sam", (c.model, c.bn, c.jit, NAIVE_SAM))
                ratio("x_tf_keras_sam", (c.model, PEER_BN, c.jit, TFK_SAM))
            if c.method in ("erm", KERAS_FIT):
                ratio("x_tf_keras_fit", (c.model, PEER_BN, c.jit, TFK_FIT))
        rows.append({k: v for k, v in row.items() if v is not None or not k.startswith("x_")})
    return rows


def check_targets(rows):
    """Each target of issues 6 and 9 that was measured, with its verdict.

    The verdict is on the wall-clock ratio; the CPU-time ratio is shown
    beside it.
    """
    checks = []

    def add(target, row, key, limit, on_cpu=False):
        value = row.get(key + "_cpu" if on_cpu else key)
        if value is None:
            return
        checks.append(
            {
                "target": target,
                "model": row["model"],
                "batchnorm": row["batchnorm"],
                "jit_compile": row["jit_compile"],
                "method": row["method"],
                "ratio": value,
                "ratio_cpu": row.get(key + "_cpu"),
                "round_range": [min(row[key + "_rounds"]), max(row[key + "_rounds"])]
                if row.get(key + "_rounds")
                else None,
                "limit": limit,
                "holds": value <= limit,
            }
        )
        if on_cpu:
            checks[-1].update(
                ratio=row.get(key), verdict="yes" if value <= limit else "no", on_cpu=True
            )
            return
        cpu = checks[-1]["ratio_cpu"]
        if cpu is None or (cpu <= limit) == (value <= limit):
            checks[-1]["verdict"] = "yes" if value <= limit else "no"
        else:
            checks[-1]["verdict"] = "unclear"

    for row in rows:
        method = row["method"]
        if row["batchnorm"] == PEER_BN:
            continue
        if method in ISSUE6_LIMITS:
            add(
                f"issue 6: {method} <= {ISSUE6_LIMITS[method]}x erm",
                row,
                "x_erm",
                ISSUE6_LIMITS[method],
            )
        if method in ISSUE9_LIMITS and row["batchnorm"] == "fused":
            add(
                f"issue 9: {method} <= {ISSUE9_LIMITS[method]}x erm (fused)",
                row,
                "x_erm",
                ISSUE9_LIMITS[method],
            )
        if method == "sam":
            add("issue 6: sam <= naive sam", row, "x_naive_sam", 1.0)
            if row["batchnorm"] == "fused":
                add("issue 9: sam (fused) <= tf-keras SAM", row, "x_tf_keras_sam", 1.0)
        if method == "erm" and row["batchnorm"] == "fused":
            add("issue 9: erm (fused) <= tf-keras fit", row, "x_tf_keras_fit", 1.0)
        if method in ISSUE19_LIMITS:
            add(
                f"issue 19: {method} <= {ISSUE19_LIMITS[method]}x erm (CPU time)",
                row,
                "x_erm",
                ISSUE19_LIMITS[method],
                on_cpu=True,
            )
    return checks


VERDICTS = {"yes": "yes", "no": "**no**", "unclear": "unclear"}


def fmt(value, spec=".2f", none="–"):
    return none if value is None else format(value, spec)


def fmt_ratio(row, key):
    """'wall (cpu)' for a ratio column."""
    if not row or row.get(key) is None:
        return "–"
    cpu = row.get(key + "_cpu")
    return f"{row[key]:.2f}" + ("" if cpu is None else f" ({cpu:.2f})")


def tables(rows, checks):
    """Markdown tables: one per model and jit setting (with the peers), the targets."""
    lines = []
    groups = []
    for row in rows:
        group = (row["model"], row["jit_compile"])
        if group not in groups:
            groups.append(group)
    index = {(r["model"], r["batchnorm"], r["jit_compile"], r["method"]): r for r in rows}
    for model, jit in groups:
        lines.append(f"### {model}, jit_compile={'on' if jit else 'off'}")
        lines.append("")
        lines.append(
            "| method | stock ms/step | stock x erm | fused ms/step | fused x erm "
            "| fused / stock | stock peak MB | fused peak MB |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        methods = []
        for row in rows:
            if (row["model"], row["jit_compile"]) == (model, jit) and row["batchnorm"] != PEER_BN:
                if row["method"] not in methods:
                    methods.append(row["method"])
        for method in methods:
            stock = index.get((model, "stock", jit, method), {})
            fused = index.get((model, "fused", jit, method), {})
            lines.append(
                f"| {method} | {fmt(stock.get('median_ms'), '.0f')} | {fmt_ratio(stock, 'x_erm')} "
                f"| {fmt(fused.get('median_ms'), '.0f')} | {fmt_ratio(fused, 'x_erm')} "
                f"| {fmt_ratio(fused, 'fused_x_stock')} | {fmt(stock.get('step_peak_mb'), '.0f')} "
                f"| {fmt(fused.get('step_peak_mb'), '.0f')} |"
            )
        peers = [
            r
            for r in rows
            if (r["model"], r["jit_compile"]) == (model, jit) and r["batchnorm"] == PEER_BN
        ]
        if peers:
            lines.append("")
            lines.append(
                "| peer row | ms/step | x its own fit | peak MB | ours | ours ms/step | ours / peer |"
            )
            lines.append("|---|---:|---:|---:|---|---:|---:|")
            for peer in peers:
                ours_methods = [KERAS_FIT, "erm"] if peer["method"] == TFK_FIT else ["sam"]
                key = "x_tf_keras_fit" if peer["method"] == TFK_FIT else "x_tf_keras_sam"
                for ours_method in ours_methods:
                    for bn in ("stock", "fused"):
                        ours = index.get((model, bn, jit, ours_method))
                        if ours is None:
                            continue
                        lines.append(
                            f"| {peer['method']} | {fmt(peer['median_ms'], '.0f')} "
                            f"| {fmt_ratio(peer, 'x_own_fit')} | {fmt(peer.get('step_peak_mb'), '.0f')} "
                            f"| {ours_method} ({bn} BN) | {fmt(ours['median_ms'], '.0f')} "
                            f"| {fmt_ratio(ours, key)} |"
                        )
        naive = [index.get((model, bn, jit, "sam")) for bn in ("stock", "fused")]
        naive = [r for r in naive if r and r.get("x_naive_sam") is not None]
        if naive:
            lines.append("")
            lines.append(
                "Our sam over the naive SAM (assign_add/assign_sub): "
                + ", ".join(f"{r['batchnorm']} BN {fmt_ratio(r, 'x_naive_sam')}" for r in naive)
                + "."
            )
        lines.append("")
    if checks:
        lines.append("### Targets")
        lines.append("")
        lines.append(
            "Median wall-clock ratio, the CPU-time ratio in parentheses, and the lowest and "
            "highest per-round wall-clock ratio. Holds: yes or no where the wall-clock and the "
            "CPU-time ratios agree, unclear where they fall on both sides of the limit; for "
            "targets marked (CPU time), the CPU-time ratio decides."
        )
        lines.append("")
        lines.append("| target | model | BN | jit | measured (cpu) | rounds | holds |")
        lines.append("|---|---|---|---|---:|---:|---|")
        for c in checks:
            cpu = "" if c.get("ratio_cpu") is None else f" ({c['ratio_cpu']:.2f})"
            spread = "–" if not c.get("round_range") else "{:.2f}–{:.2f}".format(*c["round_range"])
            lines.append(
                f"| {c['target']} | {c['model']} | {c['batchnorm']} | {'on' if c['jit_compile'] else 'off'} "
                f"| {c['ratio']:.2f}{cpu} | {spread} | {VERDICTS[c['verdict']]} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_header(meta):
    allocator = (
        "BFC CPU allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`)"
        if meta["allocator"] == "bfc"
        else "default CPU allocator (no per-row peak memory)"
    )
    return f"""- Run {meta["run"]}: `{meta["command"]}`
  - {meta["date"]} (git {meta["git_commit"]}); {meta["total_s"] / 60:.1f} min; steps x rounds: {meta["steps_rounds"]}
  - {meta["cpu_count"]} CPU cores, {meta["cpu_model"]}; Python {meta["python"]}, TensorFlow
    {meta["tensorflow"]}, Keras {meta["keras"]}, tf-keras {meta["tf_keras"]}; {allocator}
  - load average (1, 5, 15 min) before {meta["load_before"]}, after {meta["load_after"]};
    process RSS high-water mark {meta["max_rss_mb"]:.0f} MB
"""


def write_results(path, runs, rows, checks, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".json", "w") as f:
        json.dump({"runs": runs, "rows": rows, "targets": checks}, f, indent=1)
        f.write("\n")
    warmup = runs[-1]["warmup"]
    header = f"""# Step time: G-Mix methods vs ERM, naive SAM and tf-keras

Generated by `benchmarks/step_time.py`. How to read it, and the profiling of
the targets that are missed: `benchmarks/README.md`.

{"".join(run_header(meta) for meta in runs)}
Setup: batch {runs[-1]["batch_size"]} of random 32x32x3 images, 10 classes, SGD (momentum
0.9), sparse categorical cross-entropy, rho {runs[-1]["rho"]}, alpha 1.0, gamma 0.5.
Each configuration is built and traced (and compiled) by one `fit` step,
which runs a step too; {warmup} more untimed step(s) follow; then it is timed
in rounds: every round runs K steps of every configuration of a model, in a
shuffled order. Other engineers' test runs
share the 2 cores (see the load averages), so absolute times are inflated
and noisy; the ratios are paired within rounds, which cancels most of it.

- ms/step: median wall-clock time of all timed steps of the train function.
- x erm: median over rounds of (round median / erm's round median), same model,
  BatchNorm and jit setting; in parentheses the same ratio of process CPU time
  (user + system, all threads), which other processes' load disturbs much less.
  "fused / stock" and "ours / peer" are paired the same way.
- peak MB: peak of `tf.config.experimental.get_memory_info('CPU:0')` during the
  configuration's steps minus the bytes in use before them (activations,
  gradients, temporaries; not the resident weights and optimizer state), max
  over rounds. The default CPU allocator keeps no statistics, hence the BFC one.

"""
    with open(path + ".md", "w") as f:
        f.write(header + text)


def load_previous(path):
    try:
        with open(path + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"runs": [], "rows": []}


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        previous = load_previous(args.output)
        if not previous["runs"]:
            sys.exit(f"{args.output}.json holds no results to report")
        checks = check_targets(previous["rows"])
        write_results(
            args.output,
            previous["runs"],
            previous["rows"],
            checks,
            tables(previous["rows"], checks),
        )
        print(f"wrote {args.output}.md and {args.output}.json")
        return
    sys.path.insert(0, REPO)
    load_before = load_average()
    total_start = time.perf_counter()

    import keras
    import tensorflow as tf

    try:
        import tf_keras

        tf_keras_version = tf_keras.__version__
    except ImportError:
        tf_keras_version = None
        if args.peer_model:
            print("tf-keras is not installed (pip install -e '.[bench]'): no peer rows")
            args.peer_model = ""

    def log(message):
        print(message, flush=True)

    memory = Memory(args.allocator == "bfc")
    dataset = make_data(args)
    configs = []
    for model, steps, rounds in args.model_specs:
        configs += run_model(model, steps, rounds, args, dataset, memory, log)
        gc.collect()

    previous = load_previous(args.output) if args.merge else {"runs": [], "rows": []}
    measured = {c.key for c in configs}
    kept = [
        r
        for r in previous["rows"]
        if (r["model"], r["batchnorm"], r["jit_compile"], r["method"]) not in measured
    ]
    kept_runs = sorted({r["run"] for r in kept})
    runs = [m for m in previous["runs"] if m["run"] in kept_runs]
    run = max(kept_runs, default=0) + 1
    meta = {
        "run": run,
        "command": "python "
        + " ".join(
            shlex.quote(a)
            for a in [os.path.relpath(os.path.abspath(__file__), REPO)] + sys.argv[1:]
        ),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="minutes"),
        "git_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf_keras": tf_keras_version,
        "load_before": load_before,
        "load_after": load_average(),
        "batch_size": args.batch_size,
        "rho": args.rho,
        "learning_rate": args.learning_rate,
        "warmup": args.warmup,
        "steps_rounds": ", ".join(f"{m} {s}x{r}" for m, s, r in args.model_specs),
        "allocator": "bfc" if memory.enabled else "default",
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_s": time.perf_counter() - total_start,
    }
    runs.append(meta)
    new_rows = summarize(configs, run)
    rows = kept + new_rows
    checks = check_targets(rows)
    text = tables(rows, checks)
    print()
    print(tables(new_rows, check_targets(new_rows)))
    print(
        f"load before {meta['load_before']}, after {meta['load_after']}; "
        f"RSS high-water mark {meta['max_rss_mb']:.0f} MB; total {meta['total_s'] / 60:.1f} min"
    )
    if not args.no_write:
        write_results(args.output, runs, rows, checks, text)
        print(f"wrote {args.output}.md and {args.output}.json")


if __name__ == "__main__":
    main()
