"""Measures training-step time on this machine and estimates full-recipe times.

Builds and compiles the model exactly as `gmix-train` does
(`keras_gmix.train.build_compiled_model`), times a few optimizer steps per
method after a warm-up (tracing) phase, as benchmarks/step_time.py does
(`keras_gmix.timing.timed_step`), and extrapolates to a recipe's epochs.
It also counts the forward FLOPs per image (TensorFlow's profiler on the
frozen inference graph) for the GPU estimate of recipes/README.md.

    python recipes/time_steps.py --dataset ../shared/data/cifar10_partial.npz \\
        --model preact_resnet18 --methods erm sam dgmix --steps 5 \\
        --train-images 5000 --epochs 200
"""

import argparse
import dataclasses
import os
import statistics

import keras
import tensorflow as tf

from keras_gmix import data as data_lib
from keras_gmix import gradients, train
from keras_gmix.timing import timed_step


def pass_counts(method):
    """(forward, backward) passes of one step of `method`, as
    keras_gmix.gradients runs them: a perturbed method adds a forward and a
    backward pass at w + eps; a partitioned one (bgmix, dgmix) a third
    backward pass, for the flat subset at w."""
    forward = 2 if method in gradients.PERTURBED_METHODS else 1
    backward = forward + (method in gradients.PARTITIONED_METHODS)
    return forward, backward


def forward_equivalents(method):
    """One step's cost in forward passes: a backward pass costs about two."""
    forward, backward = pass_counts(method)
    return forward + 2 * backward


def forward_flops(model, input_shape):
    """Floating-point operations of one image's forward pass (inference mode)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    function = tf.function(lambda x: model(x, training=False))
    concrete = function.get_concrete_function(tf.TensorSpec((1,) + tuple(input_shape), tf.float32))
    _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    return profile.total_float_ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="../shared/data/cifar10_partial.npz")
    parser.add_argument("--model", default="preact_resnet18")
    parser.add_argument("--methods", nargs="+", default=["erm", "sam", "dgmix"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed first steps, at least 1 (the first traces the step)",
    )
    parser.add_argument(
        "--train-images", type=int, default=5000, help="images per epoch to extrapolate to"
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--gpu-tflops",
        type=float,
        default=30.0,
        help="assumed sustained GPU throughput for the estimate",
    )
    args = parser.parse_args(argv)

    splits = data_lib.load_dataset(args.dataset)
    train_ds, _ = data_lib.make_pipelines(splits, args.batch_size, augment="standard", seed=0)
    config = train.TrainConfig(dataset=args.dataset, model=args.model, batch_size=args.batch_size)
    flops = None
    steps_per_epoch = -(-args.train_images // args.batch_size)
    rows = []
    for method in args.methods:
        keras.backend.clear_session()
        model = train.build_compiled_model(
            dataclasses.replace(config, method=method), splits, steps_per_epoch
        )
        if flops is None:
            flops = forward_flops(model.inner, splits.input_shape)
        warmup = max(1, args.warmup_steps)
        model.fit(train_ds.repeat(), steps_per_epoch=warmup, epochs=1, verbose=0)
        iterator = iter(train_ds.repeat())
        timed = [timed_step(model, iterator) for _ in range(args.steps)]
        step = statistics.median(wall for wall, _, _ in timed)
        cpu_step = statistics.median(cpu for _, cpu, _ in timed)
        # On a busy machine the wall time includes waiting for the cores; the
        # CPU time spread over all cores is what an idle machine would take.
        idle_step = cpu_step / (os.cpu_count() or 1)
        hours = lambda seconds: seconds * steps_per_epoch * args.epochs / 3600  # noqa: E731
        images = args.train_images * args.epochs
        gpu_hours = images * flops * forward_equivalents(method) / (args.gpu_tflops * 1e12) / 3600
        rows.append((method, step, hours(step), cpu_step, hours(idle_step), gpu_hours))
    print(
        f"{args.model} on {splits.input_shape} images, batch {args.batch_size}, "
        f"{flops / 1e9:.3f} GFLOPs forward per image; {args.train_images} images x {args.epochs} "
        "epochs"
    )
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"| method | wall s/step (median of {args.steps}) | hours at that rate | CPU-seconds/step "
        f"| hours if the {os.cpu_count()} cores were ours | GPU hours at {args.gpu_tflops:g} "
        "TFLOP/s |"
    )
    print("|---|---|---|---|---|---|")
    for method, step, wall_hours, cpu_step, idle_hours, gpu_hours in rows:
        print(
            f"| {method} | {step:.2f} | {wall_hours:.1f} | {cpu_step:.2f} | {idle_hours:.1f} | "
            f"{gpu_hours:.2f} |"
        )


if __name__ == "__main__":
    main()
