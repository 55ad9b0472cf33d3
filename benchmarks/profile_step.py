"""Where a step's time goes: TensorFlow's profiler over a few training steps.

Builds configurations exactly as `benchmarks/step_time.py` does, warms each
up, records `--steps` steps of each with `tf.profiler.experimental` (the trace
also opens in TensorBoard's Profile tab: `tensorboard --logdir LOGDIR`), and
prints, per configuration, the op time per step grouped by op type (summed
over TensorFlow's compute threads, so with 2 threads it can exceed the wall
time) and how many times each heavy op type runs per step, which counts the
forward and backward passes.

    python benchmarks/profile_step.py --model resnet20 --bn fused \\
        --methods erm,sam,bgmix,"naive sam" --steps 3
"""

import argparse
import collections
import glob
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# Op types that carry the FLOPs; their counts per step are the pass counts.
HEAVY = (
    "Conv2D",
    "Conv2DBackpropInput",
    "Conv2DBackpropFilter",
    "FusedBatchNormV3",
    "FusedBatchNormGradV3",
    "MatMul",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument(
        "--bn", default="fused", help="stock, fused or tf-keras (for the peer rows)"
    )
    parser.add_argument("--jit", default="off")
    parser.add_argument(
        "--methods",
        default="erm,sam,bgmix",
        help="comma-separated: keras fit, erm ... dgmix, naive sam, tf-keras fit, tf-keras SAM",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=14, help="op types listed")
    parser.add_argument("--logdir", default="/tmp/gmix_profile")
    parser.add_argument(
        "--counts", action="store_true", help="also print how many ops of every type run per step"
    )
    return parser.parse_args(argv)


def op_breakdown(logdir):
    """(op time per type, events per type, wall time of the traced steps) in ms."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    times, counts = collections.Counter(), collections.Counter()
    wall = 0.0
    for line in plane.lines:
        for event in line.events:
            name = plane.event_metadata[event.metadata_id].name
            if line.name == "python" and name in ("multi_step_on_iterator", "train_function"):
                wall += event.duration_ps / 1e9
            # Op events are named "scope/op_name:OpType" on the executor's threads.
            if line.name.startswith("tf_Compute") and ":" in name:
                op_type = name.rsplit(":", 1)[1]
                times[op_type] += event.duration_ps / 1e9
                counts[op_type] += 1
    return times, counts, wall


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import step_time as st
    import tensorflow as tf

    options = st.parse_args(["--models", args.model, "--warmup", "2"])
    dataset = st.make_data(options)
    results = {}
    for method in args.methods.split(","):
        config = st.Config(args.model, args.bn, args.jit == "on", method)
        st.prepare(config, dataset, options)
        logdir = os.path.join(
            args.logdir, f"{args.model}_{args.bn}_{args.jit}_{method.replace(' ', '_')}"
        )
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.steps):
            st.run_step(config)
        elapsed = time.perf_counter() - start
        tf.profiler.experimental.stop()
        times, counts, _ = op_breakdown(logdir)
        results[method] = (times, counts, elapsed)
        config.train_model = None

    methods = list(results)
    n = args.steps
    print(
        f"\n{args.model}, {args.bn} BN, jit {args.jit}: ms per step (op time summed over threads)"
    )
    print(f"{'':28}" + "".join(f"{m[:13]:>14}" for m in methods))
    print(f"{'wall time':28}" + "".join(f"{1000 * results[m][2] / n:14.0f}" for m in methods))
    print(f"{'all ops':28}" + "".join(f"{sum(results[m][0].values()) / n:14.0f}" for m in methods))
    every = collections.Counter()
    for times, _, _ in results.values():
        every.update(times)
    for op_type, _ in every.most_common(args.top):
        print(
            f"{op_type[:28]:28}" + "".join(f"{results[m][0][op_type] / n:14.1f}" for m in methods)
        )
    print("\nheavy ops per step (pass counts)")
    for op_type in HEAVY:
        print(f"{op_type:28}" + "".join(f"{results[m][1][op_type] / n:14.1f}" for m in methods))
    print(
        f"{'ops of any type':28}"
        + "".join(f"{sum(results[m][1].values()) / n:14.0f}" for m in methods)
    )
    if args.counts:
        print("\nops per step, every type")
        types = set().union(*(results[m][1] for m in methods))
        for op_type in sorted(types, key=lambda t: (-max(results[m][1][t] for m in methods), t)):
            print(
                f"{op_type[:28]:28}"
                + "".join(f"{results[m][1][op_type] / n:14.1f}" for m in methods)
            )


if __name__ == "__main__":
    main()
