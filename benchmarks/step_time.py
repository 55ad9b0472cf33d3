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
  schedule, `perturb_every=5` (and `reuse_scale=0.3`). Its steps are not all alike, so its
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

Backends: `--backend jax` times the same rows on Keras' JAX backend (jit on,
fit's default there; the naive SAM and tf-keras rows are TensorFlow's
only). The backend is fixed when Keras is first imported, so the backends
cannot share a process: `--backends tensorflow jax` is a driver that runs
one process of this script per backend per round (`--process-rounds`),
alternating which backend goes first, and writes the combined table
(step_time_report.backend_results): each method over its own backend's ERM,
and each backend's step over the first backend's, paired by round.

Usage: the commands of the committed results (several runs merged into
the same files with `--merge`) are in benchmarks/README.md and in the
header of each report. A quick run, printed only:

    python benchmarks/step_time.py --models resnet20:1x2 --bn fused --jit off --no-write

`--report` rewrites OUTPUT.md from OUTPUT.json without measuring. The ratios,
the targets and the tables are step_time_report.py's.
"""

import argparse
import datetime
import gc
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import time

import step_time_report as report
from step_time_report import KERAS_FIT, NAIVE_SAM, PEER_BN, TFK_FIT, TFK_SAM

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

MODELS = ("small_cnn", "resnet8", "resnet20", "preact_resnet18")
# keras_gmix.backend.BACKENDS, without importing Keras before the backend is set.
BACKENDS = ("tensorflow", "jax")
# compile(jit_compile="auto") on a CPU: off on TensorFlow, on on JAX.
DEFAULT_JIT = {"tensorflow": "off", "jax": "on"}


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
    """The Keras backend and the TensorFlow settings that must precede their import."""
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != args.backend:
        raise RuntimeError(f"Keras is already imported with another backend than {args.backend}")
    os.environ["KERAS_BACKEND"] = args.backend
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
    parser.add_argument(
        "--jit",
        default=None,
        help="off, on, or off,on (default: off,on on TensorFlow, on on JAX; with "
        "--backends, each backend's fit default on a CPU: off on TensorFlow, on on JAX)",
    )
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
        default=None,
        help="writes OUTPUT.md and OUTPUT.json (default: results/step_time, with "
        "--backends results/step_time_backends)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend of this process (default: $KERAS_BACKEND or tensorflow)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=None,
        help="driver: one process per backend per round, alternating, and the combined "
        "table in OUTPUT (default OUTPUT: results/step_time_backends); ratios between "
        "backends are over the first one",
    )
    parser.add_argument(
        "--process-rounds",
        type=int,
        default=2,
        help="with --backends: rounds of one process per backend (default: %(default)s)",
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
    if args.output is None:
        name = "step_time_backends" if args.backends else "step_time"
        args.output = os.path.join(HERE, "results", name)
    if args.backends:
        if len(set(args.backends)) < 2:
            parser.error("--backends needs two backends or more, e.g. tensorflow jax")
        if args.report or args.merge:
            parser.error("--backends measures anew: no --report or --merge")
        return args  # the processes it runs check the rest
    if args.jit is None:
        args.jit = DEFAULT_JIT[args.backend] if args.backend == "jax" else "off,on"
    if args.backend != "tensorflow" and not (args.no_naive and not args.peer_model):
        print(f"naive SAM and tf-keras rows are TensorFlow's only: none on {args.backend}")
        args.no_naive, args.peer_model = True, ""
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


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="minutes")


def command_line(argv):
    """This script's command line, from the repository root."""
    script = os.path.relpath(os.path.abspath(__file__), REPO)
    return "python " + " ".join(shlex.quote(a) for a in [script] + list(argv))


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
        self.steps = None  # keras_gmix.timing.TrainSteps of train_model
        self.iterations = None  # the optimizer's step counter, counted here
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
    """Builds, runs fit for one step (symbolic build, tracing, compiling) and warms up."""
    import keras

    from keras_gmix.timing import TrainSteps

    model = build(config, args)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
    config.first_call_s = time.perf_counter() - start
    config.train_model = model
    # On JAX the optimizer's variables are not updated between the carried
    # steps, so the schedule's step counter is kept here.
    config.iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    if config.bn == PEER_BN:  # tf-keras: its own train function, on TensorFlow
        config.steps = model
    else:
        config.steps = TrainSteps(model)
    tensorflow = keras.backend.backend() == "tensorflow"
    config.iterator = iter(dataset) if tensorflow else dataset.as_numpy_iterator()
    config.warm_step_s = None
    for _ in range(args.warmup):
        config.warm_step_s, _ = run_step(config)


def run_step(config):
    """One step of the config's train function: (wall-clock s, process CPU s)."""
    from keras_gmix.timing import timed_step

    wall, cpu, config.last_loss = timed_step(config.steps, config.iterator)
    config.iterations += 1
    return wall, cpu


# -- measuring -----------------------------------------------------------------


class Memory:
    """Peak bytes of TensorFlow's CPU allocator (BFC only), or nothing."""

    def __init__(self, enabled):
        self.enabled = enabled
        if enabled:
            import tensorflow as tf

            self.tf = tf
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
            full.append(config.iterations % config.perturb_every == 0)
        wall, cpu = run_step(config)
        times.append(wall)
        cpu_times.append(cpu)
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
        config.train_model = config.steps = None
        config.iterator = None
    return configs


# -- the backends side by side ------------------------------------------------


def process_argv(args, backend, output):
    """The command-line arguments of `--backends`' process for `backend`."""
    argv = ["--backend", backend, "--models", args.models, "--bn", args.bn]
    argv += ["--jit", args.jit or DEFAULT_JIT[backend]]
    argv += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    argv += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    argv += ["--rho", str(args.rho), "--learning-rate", str(args.learning_rate)]
    argv += ["--seed", str(args.seed), "--allocator", args.allocator]
    if args.methods is not None:
        argv += ["--methods", args.methods]
    # The rows every backend has: GMixModel's methods, and keras fit if asked.
    argv += ["--no-naive", "--peer-model", ""] + (["--no-keras-fit"] if args.no_keras_fit else [])
    return argv + ["--output", output]


def process_order(backends, rounds):
    """(round, backend) in the order the processes run: each round runs one
    process per backend, and the first backend alternates between rounds,
    so that a drift of the machine's speed weighs on all alike."""
    order = []
    for r in range(rounds):
        names = list(backends) if r % 2 == 0 else list(reversed(backends))
        order += [(r, name) for name in names]
    return order


def run_backends(args, argv):
    """Runs one process per backend per round, then writes the combined table."""
    import tempfile

    load_before = load_average()
    start = time.perf_counter()
    processes = []
    with tempfile.TemporaryDirectory(prefix="step_time_backends_") as folder:
        env = dict(os.environ)
        # Compiling is not timed: later rounds may reuse the first round's programs.
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(folder, "jax_cache"))
        for r, backend in process_order(args.backends, args.process_rounds):
            output = os.path.join(folder, f"round{r + 1}_{backend}")
            command = [sys.executable, os.path.abspath(__file__)]
            command += process_argv(args, backend, output)
            print(f"\n==== round {r + 1}/{args.process_rounds}: {backend}", flush=True)
            subprocess.run(command, env=dict(env, KERAS_BACKEND=backend), check=True)
            results = report.load_previous(output)
            processes.append({"round": r + 1, "backend": backend, **results})
            # After every process, so that a run stopped half-way leaves its rounds.
            results = report.backend_results(
                backends_meta(args, argv, load_before, start), processes
            )
            if not args.no_write:
                report.write_backend_results(args.output, results)
    print()
    print(report.backend_tables(results))
    if not args.no_write:
        print(f"wrote {args.output}.md and {args.output}.json")


def backends_meta(args, argv, load_before, start):
    return {
        "command": command_line(argv),
        "date": now(),
        "git_commit": git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "backends": list(args.backends),
        "process_rounds": args.process_rounds,
        "load_before": load_before,
        "load_after": load_average(),
        "total_s": time.perf_counter() - start,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.backends:
        run_backends(args, sys.argv[1:] if argv is None else argv)
        return
    if args.report:
        previous = report.load_previous(args.output)
        if not previous["runs"]:
            sys.exit(f"{args.output}.json holds no results to report")
        report.write_results(args.output, previous["runs"], previous["rows"])
        print(f"wrote {args.output}.md and {args.output}.json")
        return
    sys.path.insert(0, REPO)
    load_before = load_average()
    total_start = time.perf_counter()

    import keras
    import tensorflow as tf

    jax_version = None
    if args.backend == "jax":
        import jax

        jax_version = jax.__version__
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

    # TensorFlow's allocator does not see what XLA allocates on JAX.
    memory = Memory(args.allocator == "bfc" and args.backend == "tensorflow")
    dataset = make_data(args)
    configs = []
    for model, steps, rounds in args.model_specs:
        configs += run_model(model, steps, rounds, args, dataset, memory, log)
        gc.collect()

    previous = report.load_previous(args.output) if args.merge else {"runs": [], "rows": []}
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
        "command": command_line(sys.argv[1:] if argv is None else argv),
        "date": now(),
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
    if args.backend != "tensorflow":  # the runs of TensorFlow keep their earlier fields
        meta.update(backend=args.backend, jax=jax_version)
    runs.append(meta)
    new_rows = report.summarize(configs, run)
    print()
    print(report.tables(new_rows, report.check_targets(new_rows)))
    print(
        f"load before {meta['load_before']}, after {meta['load_after']}; "
        f"RSS high-water mark {meta['max_rss_mb']:.0f} MB; total {meta['total_s'] / 60:.1f} min"
    )
    if not args.no_write:
        report.write_results(args.output, runs, kept + new_rows)
        print(f"wrote {args.output}.md and {args.output}.json")


if __name__ == "__main__":
    main()
