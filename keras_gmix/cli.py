"""Console entry points. Thin: parse arguments, call the library, print.

- `gmix-train`: one training run (`keras_gmix.train`).
- `gmix-compare`: several methods and seeds on one recipe, or existing runs
  collected, as a table and a bar chart (`keras_gmix.compare`).
- `gmix-flatness`: flatness measures of saved models (`keras_gmix.flatness_report`).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys


def _user_errors():
    """The errors an entry point reports as one sentence (exit code 2): bad
    settings, missing or unreadable files, a run folder in use, a data set
    that cannot be downloaded (`data.DownloadUnavailableError` is a
    ConnectionError)."""
    from keras_gmix import records

    return (
        ValueError,
        FileNotFoundError,
        ConnectionError,
        records.RunFolderInUseError,
        records.RecordWriteError,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a closed terminal or ssh session), raised in the
    main thread like Ctrl-C's KeyboardInterrupt, so that a stopped run closes
    its files and says how to continue."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# The stop signals received in this process, newest last. A handler's
# exception can be lost: raised while Python runs a `__del__` (or a callback
# from C that ignores it), it is printed as "Exception ignored" and training
# goes on. `_StopWhenSignalled` raises it again at the next batch.
_received = []


def _raise_terminated(signum, frame):
    _received.append(signum)
    raise Terminated(signum)


def _raise_interrupt(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


def _stop_when_signalled():
    """A Keras callback that raises, at the next batch or epoch end, a stop
    signal whose exception was lost."""
    import keras

    class _StopWhenSignalled(keras.callbacks.Callback):
        def _stop_if_signalled(self, *args, **kwargs):
            if _received:
                signum = _received[-1]
                raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)

        on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_signalled

    return _StopWhenSignalled()


# Signals that end a run with a word, besides Ctrl-C (SIGHUP exists on POSIX only).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _stops_as_interrupts():
    """Within the block, SIGTERM and SIGHUP raise `Terminated` (Python's
    default would end the process without a word); outside, the old
    handlers are back."""
    _received.clear()
    handlers = {signum: _raise_terminated for signum in STOP_SIGNALS}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        # Recorded too (unless ignored, as in a background job without job control).
        handlers[signal.SIGINT] = _raise_interrupt
    try:
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_interrupted(parser, error, how_to_continue):
    """Ends an entry point stopped by Ctrl-C, SIGTERM or SIGHUP with one line
    (exit 128 + signal)."""
    signum = error.signum if isinstance(error, Terminated) else signal.SIGINT
    what = signal.Signals(signum).name if isinstance(error, Terminated) else "Ctrl-C"
    parser.exit(128 + signum, f"{parser.prog}: stopped by {what}. {how_to_continue}\n")


def _epochs_saved(backup_dir):
    """The epochs a stopped run's backup holds (0 when none or unreadable)."""
    from keras_gmix import checkpoint

    try:
        return checkpoint.saved_epoch(backup_dir)
    except (OSError, ValueError):
        return 0


# Flags of gmix-train that gmix-compare replaces by its own.
_COMPARE_REPLACES = ("method", "seed", "output", "resume")


def _with_default(text, default):
    """A help sentence with the default appended (argparse's own defaults are
    None here, so that a config file's values are not overridden)."""
    shown = "not set" if default is None else default
    return f"{text} Default: {shown}."


def _parser_from_config(config_cls, description, exclude=(), prog=None):
    """An argparse parser with one --flag per TrainConfig field, typed from it,
    with its help sentence and choices from the field's metadata (`config.setting`)."""
    from keras_gmix import config as config_lib

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON or YAML file of settings (the keys are the flags' names); "
        "flags given as well override it. Default: none.",
    )
    defaults = config_cls()
    for field in dataclasses.fields(config_cls):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        text = _with_default(field.metadata["help"], getattr(defaults, field.name))
        kind, _ = config_lib.field_kind(field)
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif kind is tuple:
            parser.add_argument(flag, type=float, nargs="+", default=None, help=text)
        elif field.metadata["choices"]:
            parser.add_argument(flag, choices=field.metadata["choices"], default=None, help=text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=text)
    return parser


def _config_values(args):
    """Defaults < config file < flags (and, with --resume, the run's saved config first)."""
    from keras_gmix import config as config_lib

    values = config_lib.load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    values.update({k: v for k, v in args.items() if v is not None})
    return values


def train_parser():
    from keras_gmix import config as config_lib

    return _parser_from_config(config_lib.TrainConfig, train_main.__doc__, prog="gmix-train")


def train_main(argv=None):
    """`gmix-train`: one training run; with no arguments, dgmix on digits."""
    from keras_gmix import config as config_lib
    from keras_gmix import train

    parser = train_parser()
    args = vars(parser.parse_args(argv))
    config = None
    try:
        with _stops_as_interrupts():
            values = config_lib.resume_values(_config_values(args))
            if values.get("resume") and not values.get("output"):
                raise ValueError("--resume needs --output DIR: the run folder to continue.")
            config = config_lib.TrainConfig.from_dict(values)
            config = dataclasses.replace(config, output=config.output or train.default_output())
            results = train.run(config, callbacks=[_stop_when_signalled()])
    except _user_errors() as error:
        parser.exit(2, f"gmix-train: error: {error}\n")
    except KeyboardInterrupt as error:
        output = config.output if config else None
        if output and os.path.exists(os.path.join(output, "config.json")):
            saved = _epochs_saved(os.path.join(output, "backup"))
            how = (
                f"The run's last finished epoch ({saved}) is saved: continue it with "
                if saved
                else "No epoch finished yet: start it again with "
            ) + f"`gmix-train --resume --output {output}`."
        else:
            how = "Nothing was saved yet: start the run again."
        _exit_interrupted(parser, error, how)
    print(json.dumps(results, indent=2))
    print(
        f"\n{results['method']} on {results['dataset']}: test accuracy "
        f"{results['test_accuracy']:.4f} after {results['epochs']} epochs, "
        f"{results['seconds']:.1f} s. Output: {results['output']}"
    )
    return 0


def compare_parser():
    from keras_gmix import config as config_lib

    parser = _parser_from_config(
        config_lib.TrainConfig, compare_main.__doc__, exclude=_COMPARE_REPLACES, prog="gmix-compare"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help=f"Methods to train and compare, any of {config_lib.METHODS}. Default: all six.",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="Seeds to train each method with (one run per method and seed). Default: 0.",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Folder of the runs and of results.md/results.png. "
        "Default: runs/compare-<time> (with --collect: the single DIR).",
    )
    parser.add_argument(
        "--collect",
        nargs="+",
        metavar="DIR",
        default=None,
        help="Train nothing: read results.json of these run folders "
        "(searched recursively) and write the table and chart. Default: off.",
    )
    return parser


def _compare(args, methods, seeds, output, collect):
    from keras_gmix import compare
    from keras_gmix import config as config_lib

    if collect:
        # The backend is chosen before this (gmix_launch); nothing else may be set.
        config_flags = [k for k, v in args.items() if v is not None and k != "backend"]
        if config_flags:
            raise ValueError(f"--collect trains nothing: drop the training flags {config_flags}.")
        return compare.collect_and_report(collect, output=output)
    config = config_lib.TrainConfig.from_dict(_config_values(args))
    return compare.compare(
        config,
        methods=methods or list(config_lib.METHODS),
        seeds=seeds or [0],
        output=output,
        callbacks=[_stop_when_signalled()],
    )


def compare_main(argv=None):
    """`gmix-compare`: runs methods x seeds on one recipe (or collects runs)
    into results.md and results.png."""
    parser = compare_parser()
    args = vars(parser.parse_args(argv))
    methods, seeds = args.pop("methods"), args.pop("seeds")
    output, collect = args.pop("output"), args.pop("collect")
    try:
        with _stops_as_interrupts():
            summary = _compare(args, methods, seeds, output, collect)
    except _user_errors() as error:
        parser.exit(2, f"gmix-compare: error: {error}\n")
    except KeyboardInterrupt as error:
        _exit_interrupted(
            parser,
            error,
            "Finished runs are kept and the unfinished one resumes from its last epoch: "
            "start gmix-compare again with the same settings and --output to continue.",
        )
    print(summary.markdown)
    print(f"Wrote {summary.table_path} and {summary.chart_path}")
    return 0


# The measurement flags of gmix-flatness: (flag, key of
# `flatness_report.FLATNESS_DEFAULTS`, type, help sentence).
_FLATNESS_FLAGS = (
    ("--rho", "rho", float, "Radius of the rho-sharpness ball (>= 0)."),
    (
        "--eigenvalue-iters",
        "eigenvalue_iters",
        int,
        "Power iterations of the top Hessian eigenvalue.",
    ),
    ("--sharpness-steps", "sharpness_steps", int, "Gradient-ascent steps of rho-sharpness."),
    (
        "--trace-samples",
        "trace_samples",
        int,
        "Hutchinson samples of the Hessian trace; 0 skips it.",
    ),
    ("--points", "landscape_points", int, "Points of the 1D loss landscape."),
    (
        "--span",
        "landscape_span",
        float,
        "The 1D landscape runs over [-span, span] times a filter-normalized direction.",
    ),
    ("--seed", "seed", int, "Seed of every random direction and vector."),
    ("--batch-size", "batch_size", int, "Examples per evaluation batch."),
)


def flatness_parser():
    from keras_gmix import config as config_lib
    from keras_gmix import flatness_report as fr

    parser = argparse.ArgumentParser(prog="gmix-flatness", description=flatness_main.__doc__)
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL.keras",
        help="Saved models to measure, e.g. <run>/model.keras.",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="Data set to measure on: a name, a .npz path or a folder of class "
        "subfolders. Default: the dataset of config.json beside the first model.",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Directory where TensorFlow Datasets keeps its data. Default: TFDS' own.",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="Digits and folders: side length in pixels the models take. "
        "Default: from config.json, else the data set's own size.",
    )
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="Split whose examples are measured. Default: test.",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=512,
        help="Number of examples measured: the first N of the split. Default: 512.",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Folder of the table and figures. Default: runs/flatness-<time>.",
    )
    parser.add_argument(
        "--backend",
        choices=("auto",) + config_lib.BACKENDS,
        default="auto",
        help="Keras backend to measure on (set before Keras is imported, as gmix-train's "
        "--backend); auto: the one Keras runs on. A model.keras of either backend loads "
        "on both. Default: auto.",
    )
    defaults = fr.FLATNESS_DEFAULTS
    for flag, key, kind, text in _FLATNESS_FLAGS:
        parser.add_argument(
            flag, type=kind, default=defaults[key], help=_with_default(text, defaults[key])
        )
    return parser


def flatness_main(argv=None):
    """`gmix-flatness`: top Hessian eigenvalue, rho-sharpness and 1D landscapes of saved models."""
    from keras_gmix import config as config_lib
    from keras_gmix import flatness_report as fr

    parser = flatness_parser()
    args = parser.parse_args(argv)
    try:
        config_lib.check_backend(args.backend)
        result = fr.report(
            args.models,
            dataset=args.dataset,
            output=args.output,
            split=args.split,
            examples=args.examples,
            data_dir=args.data_dir,
            image_size=args.image_size,
            rho=args.rho,
            eigenvalue_iters=args.eigenvalue_iters,
            sharpness_steps=args.sharpness_steps,
            trace_samples=args.trace_samples,
            landscape_points=args.points,
            landscape_span=args.span,
            seed=args.seed,
            batch_size=args.batch_size,
        )
    except _user_errors() as error:
        parser.exit(2, f"gmix-flatness: error: {error}\n")
    print(result.table)
    print("Wrote " + ", ".join(result.files))
    return 0


if __name__ == "__main__":
    # `python -m keras_gmix.cli` imports Keras with the package, before any
    # flag is read: it runs on KERAS_BACKEND, and a --backend naming another
    # is refused. The console scripts go through `gmix_launch`, which sets it.
    sys.exit(train_main())
