"""Console entry points. Thin: parse arguments, call the library, print."""

import argparse
import dataclasses
import json
import sys
import typing


def _parser_from_config(config_cls, description):
    """An argparse parser with one --flag per TrainConfig field, typed from it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="JSON or YAML file of settings; flags override it")
    defaults = config_cls()
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        kind = typing.get_args(field.type)[0] if typing.get_origin(field.type) is typing.Union else field.type
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"default: {default}")
        elif kind is tuple:
            parser.add_argument(flag, type=float, nargs="+", default=None, help=f"default: {default}")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"default: {default}")
    return parser


def train_main(argv=None):
    """`gmix-train`: one training run; with no arguments, dgmix on digits."""
    from keras_gmix import train

    parser = _parser_from_config(train.TrainConfig, train_main.__doc__)
    args = vars(parser.parse_args(argv))
    values = train.load_config_file(args.pop("config")) if args.get("config") else {}
    values.update({k: v for k, v in args.items() if v is not None})
    try:
        config = train.TrainConfig.from_dict(values)
        results = train.run(config)
    except ValueError as error:
        parser.exit(2, f"gmix-train: error: {error}\n")
    print(json.dumps(results, indent=2))
    print(
        f"\n{results['method']} on {results['dataset']}: test accuracy "
        f"{results['test_accuracy']:.4f} after {results['epochs']} epochs, "
        f"{results['seconds']:.1f} s. Output: {results['output']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
