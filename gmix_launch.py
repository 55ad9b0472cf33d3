"""The console scripts' entry: chooses Keras' backend before Keras is imported.

Keras fixes its backend when it is first imported, and `import keras_gmix`
imports Keras, so `gmix-train --backend jax` cannot choose it inside the
package. This module, outside it, reads the backend from the command line
and sets `KERAS_BACKEND`, then imports `keras_gmix.cli` and runs the
command. The backend is, first found first:

1. `--backend NAME` (or `--backend=NAME`);
2. the `backend` key of the `--config FILE` (JSON, or YAML by its name);
3. with `--resume --output DIR`, the backend DIR's run was started on (its
   config.json), so that `gmix-train --resume --output DIR` alone continues
   a run where it began;
4. `KERAS_BACKEND` as it is (unset: Keras' own choice, TensorFlow).

"auto" leaves the choice to the next source. A backend other than the one of
an already imported Keras (a caller that imported it first) is refused.
Errors in the flags or files are left to the command, which reports them.
"""

import json
import os
import sys

BACKENDS = ("tensorflow", "jax")


def _flag(argv, name):
    """The value of `--name VALUE` or `--name=VALUE` in argv (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def _backend_in_file(path):
    """The `backend` key of a JSON or YAML settings file, or None."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception:  # noqa: BLE001  the command reports a bad file in its own words
        return None
    return values.get("backend") if isinstance(values, dict) else None


def requested_backend(argv, environ=None):
    """The backend the command line asks for (see the module docstring), or
    None to leave Keras' own choice."""
    environ = os.environ if environ is None else environ
    sources = [lambda: _flag(argv, "--backend")]
    config = _flag(argv, "--config")
    if config:
        sources.append(lambda: _backend_in_file(config))
    output = _flag(argv, "--output")
    if "--resume" in argv and output:
        sources.append(lambda: _backend_in_file(os.path.join(output, "config.json")))
    sources.append(lambda: environ.get("KERAS_BACKEND"))
    for source in sources:
        backend = source()
        if backend and backend != "auto":
            return backend
    return None


def choose_backend(argv):
    """Sets KERAS_BACKEND for the command line `argv`; returns the backend
    (None: Keras' own choice), or exits with a sentence when an imported
    Keras runs on another one."""
    backend = requested_backend(argv)
    if backend is None or backend not in BACKENDS:
        return backend  # an unknown name: the command's parser says which are allowed
    keras = sys.modules.get("keras")
    running = keras.backend.backend() if keras is not None else None
    if running is not None and running != backend:
        sys.exit(
            f"error: --backend {backend} was asked, but Keras is imported already and runs "
            f"on {running!r}: the backend is fixed when Keras is first imported. Start a "
            f"new process (e.g. `gmix-train --backend {backend} ...`)."
        )
    os.environ["KERAS_BACKEND"] = backend
    return backend


def _run(command, argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    choose_backend(argv)
    from keras_gmix import cli

    return getattr(cli, command)(argv)


def train(argv=None):
    """`gmix-train` (keras_gmix.cli.train_main) on the backend asked for."""
    return _run("train_main", argv)


def compare(argv=None):
    """`gmix-compare` (keras_gmix.cli.compare_main) on the backend asked for."""
    return _run("compare_main", argv)


def flatness(argv=None):
    """`gmix-flatness` (keras_gmix.cli.flatness_main) on the backend asked for."""
    return _run("flatness_main", argv)


COMMANDS = {"gmix-train": train, "gmix-compare": compare, "gmix-flatness": flatness}

if __name__ == "__main__":
    # python gmix_launch.py gmix-train [flags]: the console scripts without installing.
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python gmix_launch.py {{{','.join(COMMANDS)}}} [flags]")
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
