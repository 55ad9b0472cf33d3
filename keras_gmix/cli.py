"""Console entry points. Thin: parse arguments, call the library, print.

- `gmix-train`: one training run (`keras_gmix.train`).
- `gmix-compare`: several methods and seeds on one recipe, or existing runs
  collected, as a table and a bar chart (`keras_gmix.compare`).
- `gmix-flatness`: flatness measures of saved models (`keras_gmix.flatness_report`).
"""

import argparse
import dataclasses
import json
import sys


def _user_errors():
    """The errors an entry point reports as one sentence (exit code 2): bad
    settings, missing or unreadable files, a run folder in use, a data set
    that cannot be downloaded (`data.DownloadUnavailableError` is a
    ConnectionError)."""
    from keras_gmix import records

    return (ValueError, FileNotFoundError, ConnectionError, records.RunFolderInUseError)


# Flags of gmix-train that gmix-compare replaces by its own.
_COMPARE_REPLACES = ("method", "seed", "output", "resume")


def _choices():
    from keras_gmix import train

    return {
        "method": train.METHODS,
        "model": train.models_lib.MODEL_NAMES,
        "schedule": train.SCHEDULES,
        "distribute": train.DISTRIBUTE,
        "mixed_precision": train.PRECISIONS,
        "augment": train.AUGMENT,
        "mix": train.MIXES,
    }


def _parser_from_config(config_cls, description, exclude=(), prog=None):
    """An argparse parser with one --flag per TrainConfig field, typed from it."""
    from keras_gmix import train

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="JSON or YAML file of settings; flags override it")
    defaults = config_cls()
    choices = _choices()
    for field in dataclasses.fields(config_cls):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind, _ = train.field_kind(field)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default: {default}")
        elif kind is tuple:
            parser.add_argument(flag, type=float, nargs="+", default=None, help=f"default: {default}")
        elif field.name in choices:
            parser.add_argument(flag, choices=choices[field.name], default=None, help=f"default: {default}")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"default: {default}")
    return parser


def _config_values(train, args):
    """Defaults < config file < flags (and, with --resume, the run's saved config first)."""
    values = train.load_config_file(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    values.update({k: v for k, v in args.items() if v is not None})
    return values


def train_main(argv=None):
    """`gmix-train`: one training run; with no arguments, dgmix on digits."""
    from keras_gmix import train

    parser = _parser_from_config(train.TrainConfig, train_main.__doc__, prog="gmix-train")
    args = vars(parser.parse_args(argv))
    try:
        values = train.resume_values(_config_values(train, args))
        config = train.TrainConfig.from_dict(values)
        results = train.run(config)
    except _user_errors() as error:
        parser.exit(2, f"gmix-train: error: {error}\n")
    print(json.dumps(results, indent=2))
    print(
        f"\n{results['method']} on {results['dataset']}: test accuracy "
        f"{results['test_accuracy']:.4f} after {results['epochs']} epochs, "
        f"{results['seconds']:.1f} s. Output: {results['output']}"
    )
    return 0


def compare_main(argv=None):
    """`gmix-compare`: runs methods x seeds on one recipe (or collects runs) into results.md and results.png."""
    from keras_gmix import compare
    from keras_gmix import train

    parser = _parser_from_config(
        train.TrainConfig, compare_main.__doc__, exclude=_COMPARE_REPLACES, prog="gmix-compare"
    )
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"methods to run; default: all six {train.METHODS}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds to run; default: 0")
    parser.add_argument("--output", default=None,
                        help="folder of the runs and of results.md/results.png; "
                             "default: runs/compare-<time> (with --collect: the single DIR)")
    parser.add_argument("--collect", nargs="+", metavar="DIR", default=None,
                        help="train nothing: read results.json of these run folders "
                             "(searched recursively) and write the table and chart")
    args = vars(parser.parse_args(argv))
    methods, seeds = args.pop("methods"), args.pop("seeds")
    output, collect = args.pop("output"), args.pop("collect")
    try:
        if collect:
            config_flags = [k for k, v in args.items() if v is not None]
            if config_flags:
                raise ValueError(f"--collect trains nothing: drop the training flags {config_flags}.")
            summary = compare.collect_and_report(collect, output=output)
        else:
            config = train.TrainConfig.from_dict(_config_values(train, args))
            summary = compare.compare(
                config, methods=methods or list(train.METHODS), seeds=seeds or [0], output=output
            )
    except _user_errors() as error:
        parser.exit(2, f"gmix-compare: error: {error}\n")
    print(summary.markdown)
    print(f"Wrote {summary.table_path} and {summary.chart_path}")
    return 0


def flatness_main(argv=None):
    """`gmix-flatness`: top Hessian eigenvalue, rho-sharpness and 1D landscapes of saved models."""
    from keras_gmix import flatness_report as fr

    parser = argparse.ArgumentParser(prog="gmix-flatness", description=flatness_main.__doc__)
    parser.add_argument("models", nargs="+", metavar="MODEL.keras", help="saved models, e.g. <run>/model.keras")
    parser.add_argument("--dataset", default=None,
                        help="data set name or .npz path; default: from config.json beside the first model")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--image-size", type=int, default=None, help="digits only: side length the models take")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="default: test")
    parser.add_argument("--examples", type=int, default=512, help="first N examples of the split; default: 512")
    parser.add_argument("--output", default=None, help="default: runs/flatness-<time>")
    defaults = fr.MEASURE_DEFAULTS
    parser.add_argument("--rho", type=float, default=defaults["rho"], help=f"default: {defaults['rho']}")
    parser.add_argument("--eigenvalue-iters", type=int, default=defaults["eigenvalue_iters"],
                        help=f"power iterations; default: {defaults['eigenvalue_iters']}")
    parser.add_argument("--sharpness-steps", type=int, default=defaults["sharpness_steps"],
                        help=f"ascent steps; default: {defaults['sharpness_steps']}")
    parser.add_argument("--trace-samples", type=int, default=defaults["trace_samples"],
                        help="Hutchinson samples of the Hessian trace; 0 skips it; default: 0")
    parser.add_argument("--points", type=int, default=defaults["landscape_points"],
                        help=f"1D landscape points; default: {defaults['landscape_points']}")
    parser.add_argument("--span", type=float, default=defaults["landscape_span"],
                        help=f"1D landscape over [-span, span]; default: {defaults['landscape_span']}")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="default: 0")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"],
                        help=f"default: {defaults['batch_size']}")
    args = parser.parse_args(argv)
    try:
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
    sys.exit(train_main())
