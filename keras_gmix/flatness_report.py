"""`gmix-flatness`: flatness measures of saved models, as a table and figures.

`report` loads saved `.keras` models, measures each on the same examples
with `keras_gmix.flatness.measure_flatness` (the record `FlatnessMonitor`
writes during training), ranks them and writes into its output folder:

    flatness.md          the table, flattest (smallest top eigenvalue) first
    flatness.json        the records and the raw 1D landscape arrays
    landscape_1d.png     the 1D landscapes of all models, overlaid
    landscape_<name>.png one figure per model

The examples come from `--dataset` or, by default, from the `config.json`
that `gmix-train` wrote beside the first model, and are preprocessed as
`gmix-train` does (the training split's per-channel normalization).
"""

import dataclasses
import json
import math
import os
import sys
import time

import keras
import numpy as np

from keras_gmix import checks, records
from keras_gmix.flatness import FLATNESS_DEFAULTS, measure_flatness
from keras_gmix.flatness_plots import plot_landscape_1d

# ---------------------------------------------------------------------------
# Saved models and their data


def model_label(path):
    """A short name for a saved model: its run folder for `<run>/model.keras`."""
    path = os.path.abspath(os.fspath(path))
    base = os.path.basename(path)
    if base == "model.keras":
        return os.path.basename(os.path.dirname(path))
    return os.path.splitext(base)[0]


def run_files(model_path):
    """`(config, results)` dicts from the gmix-train folder of a model, or None each."""
    folder = os.path.dirname(os.path.abspath(os.fspath(model_path)))
    found = []
    for name in ("config.json", "results.json"):
        path = os.path.join(folder, name)
        fix = (
            f"restore it from a copy, or move {os.path.basename(model_path)} out of the run folder"
        )
        found.append(records.read_json(path, fix) if os.path.exists(path) else None)
    return tuple(found)


def load_model(path):
    """Loads a `.keras` model in safe mode, with keras_gmix's classes registered."""
    import keras_gmix  # noqa: F401  registers GMixModel, BatchNormalization, LinearWarmup

    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model file: {path!r}")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001  zip, HDF5, JSON and Keras errors alike
        # Keras' own errors rarely name the file (a truncated one gives
        # "File is not a zip file").
        raise ValueError(
            f"{path} is unreadable as a Keras model ({type(error).__name__}: {error}): "
            "a run killed while saving leaves no model.keras, so the file was cut or "
            "changed later. Train the run again, or restore the file from a copy."
        ) from error


def _dataset_path_of_the_run(config):
    """config.json's `dataset`; a relative path that does not exist from here
    (a run started in another directory) is taken from the data's
    fingerprint, which holds it absolute."""
    from keras_gmix.data import recorded_path

    dataset = config.get("dataset")
    return recorded_path(config.get("data_fingerprint"), "train", dataset) or dataset


def _check_model_fits_the_labels(model, path, x, y, data_info):
    """Refuses, in one sentence, a model with fewer outputs than the data has classes."""
    width = int(model.predict(x[:1], verbose=0).shape[-1])
    if width > 1 and int(np.max(y)) >= width:
        raise ValueError(
            f"{path} outputs {width} classes, but the {data_info['split']} examples of "
            f"{data_info['dataset']} hold class {int(np.max(y))}: measure it on the data "
            "it was trained on (--dataset)."
        )


def evaluation_loss(model):
    """Plain sparse cross-entropy matching the model's output (logits or probabilities).

    No label smoothing, so that models trained differently are measured on
    the same objective. Logits or not is read from the compiled loss, else
    from the last layer's activation.
    """
    from_logits = getattr(getattr(model, "loss", None), "from_logits", None)
    if from_logits is None:
        last = getattr(model, "inner", model).layers[-1]
        activation = getattr(getattr(last, "activation", None), "__name__", "")
        from_logits = not (activation == "softmax" or isinstance(last, keras.layers.Softmax))
    return keras.losses.SparseCategoricalCrossentropy(from_logits=bool(from_logits))


def load_examples(
    dataset,
    split="test",
    examples=512,
    data_dir=None,
    download=True,
    train_fraction=None,
    train_size=None,
    image_size=None,
    seed=0,
    test_dataset=None,
    color_mode="rgb",
):
    """The first `examples` images of a split, preprocessed as gmix-train does.

    Returns:
        `(x, y)`: float32 images normalized with the training split's
        per-channel mean and std, and int64 labels.
    """
    from keras_gmix import data as data_lib
    from keras_gmix.config import data_arguments

    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test'. Received: split={split!r}")
    examples = checks.check_number("examples", examples, low=1, integer=True)
    splits = data_lib.load_dataset(
        **data_arguments(
            dict(
                dataset=dataset,
                test_dataset=test_dataset,
                data_dir=data_dir,
                download=download,
                train_fraction=train_fraction,
                train_size=train_size,
                image_size=image_size,
                color_mode=color_mode,
                seed=seed,
            )
        )
    )
    x = getattr(splits, f"x_{split}")[:examples]
    y = getattr(splits, f"y_{split}")[:examples]
    pipeline = data_lib.make_pipeline(
        x, y, 512, training=False, normalization=(splits.mean, splits.std)
    )
    xs, ys = zip(*pipeline.as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def accuracy(model, x, y, batch_size=256):
    network = getattr(model, "inner", model)
    predictions = network.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == np.asarray(y).reshape(-1)))


# ---------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class FlatnessReport:
    """What `report` measured and wrote.

    Attributes:
        rows: one dict per model, ranked (flattest first).
        landscapes: dict of model name to its 1D `LandscapeResult`.
        data: dict describing the examples measured on.
        table: the markdown table.
        files: the paths written.
    """

    rows: list
    landscapes: dict
    data: dict
    table: str
    files: list


def _unique_labels(paths):
    labels = [model_label(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [os.path.relpath(os.path.abspath(p)) for p in paths]
    return labels


def _format(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or (value and abs(value) < 1e-3)
            else f"{value:.{digits}f}"
        )
    return str(value)


def format_table(rows, rho):
    """The ranked markdown table of `report`'s rows."""
    with_trace = any(row.get("hessian_trace") is not None for row in rows)
    header = ["rank", "model", "method", "accuracy", "loss", "top Hessian eigenvalue"]
    header += [f"rho-sharpness (rho={rho:g})"]
    header += ["Hessian trace (± std error)"] if with_trace else []
    header += ["1D landscape mean rise"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            str(row["rank"]),
            row["model"],
            row.get("method") or "–",
            _format(row["accuracy"]),
            _format(row["loss"]),
            _format(row["top_eigenvalue"], 3),
            _format(row["rho_sharpness"]),
        ]
        if with_trace:
            trace = _format(row["hessian_trace"], 3)
            error = row.get("hessian_trace_std_error")
            if row["hessian_trace"] is not None and error is not None and not math.isnan(error):
                trace += f" ± {_format(error, 3)}"
            cells.append(trace)
        cells.append(_format(row["landscape_mean_rise"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    model_paths,
    dataset=None,
    output=None,
    split="test",
    examples=512,
    data_dir=None,
    image_size=None,
    verbose=1,
    **measure_kwargs,
):
    """Measures saved models on the same examples and writes the table and figures.

    Args:
        model_paths: list of `.keras` files (e.g. `<run>/model.keras`).
        dataset: data set name or `.npz` path; None reads `dataset` (and
            its subset, image size and seed) from the `config.json` beside
            the first model. Defaults to `None`.
        output: folder for the table and figures. Defaults to
            `runs/flatness-<time>`.
        split: `"test"` or `"train"`. Defaults to `"test"`.
        examples: how many examples of the split (the first ones).
            Defaults to `512`.
        data_dir: TFDS data directory. Defaults to `None`.
        image_size: digits only: the side length the model expects.
            Defaults to `None` (from config.json, else 8).
        verbose: 1 prints progress. Defaults to `1`.
        **measure_kwargs: settings of `measure_flatness` (`rho`,
            `eigenvalue_iters`, `sharpness_steps`, `trace_samples`,
            `landscape_points`, `landscape_span`, `seed`, `batch_size`).

    Returns:
        A `FlatnessReport`.
    """
    if not model_paths:
        raise ValueError("Give at least one saved model (.keras file).")
    unknown = sorted(set(measure_kwargs) - set(FLATNESS_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown measure settings {unknown}; valid: {sorted(FLATNESS_DEFAULTS)}")
    settings = {**FLATNESS_DEFAULTS, **measure_kwargs}
    model_paths = [os.fspath(p) for p in model_paths]
    for path in model_paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"No such model file: {path!r}")

    data_settings = {}
    first_config, _ = run_files(model_paths[0])
    if dataset is None:
        if first_config is None:
            raise ValueError(
                f"No --dataset given and no config.json beside {model_paths[0]}: "
                "name the data set the models were trained on."
            )
        from keras_gmix.config import DATA_KEYS

        data_settings = {
            k: first_config.get(k) for k in DATA_KEYS if first_config.get(k) is not None
        }
        if data_settings.get("dataset"):
            data_settings["dataset"] = _dataset_path_of_the_run(first_config)
    else:
        data_settings["dataset"] = dataset
    if data_dir is not None:
        data_settings["data_dir"] = data_dir
    if image_size is not None:
        data_settings["image_size"] = image_size
    x, y = load_examples(split=split, examples=examples, **data_settings)
    data_info = {**data_settings, "split": split, "examples": int(len(y))}

    output = output or os.path.join("runs", time.strftime("flatness-%Y%m%d-%H%M%S"))
    records.check_output_folder(output)
    os.makedirs(output, exist_ok=True)
    labels = _unique_labels(model_paths)
    rows, landscapes, files = [], {}, []
    for label, path in zip(labels, model_paths):
        if verbose:
            print(
                f"gmix-flatness: measuring {label} ({path}) on {len(y)} {split} examples ...",
                flush=True,
            )
        model = load_model(path)
        config, results = run_files(path)
        _check_model_fits_the_labels(model, path, x, y, data_info)
        if config is None and verbose:
            print(
                f"gmix-flatness: {path} has no gmix-train config.json beside it: its inputs "
                "are prepared as gmix-train prepares them (pixels scaled to [0, 1], then "
                "normalized by the training split's per-channel mean and std); a model "
                "with preprocessing of its own is measured on other inputs than it was "
                "trained on.",
                file=sys.stderr,
            )
        start = time.perf_counter()
        record, landscape = measure_flatness(model, (x, y), evaluation_loss(model), **settings)
        row = {
            "model": label,
            "path": path,
            "method": getattr(model, "method", None) or (config or {}).get("method"),
            "accuracy": accuracy(model, x, y, settings["batch_size"]),
            "run_test_accuracy": (results or {}).get("test_accuracy"),
            **record,
            "seconds": round(time.perf_counter() - start, 2),
        }
        rows.append(row)
        landscapes[label] = landscape
        png = os.path.join(output, f"landscape_{label.replace(os.sep, '_')}.png")
        plot_landscape_1d(landscape, png, title=f"{label}: 1D loss landscape ({split})")
        files.append(png)
        keras.backend.clear_session()

    rows.sort(key=lambda r: r["top_eigenvalue"])
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    overlay = os.path.join(output, "landscape_1d.png")
    plot_landscape_1d(
        {row["model"]: landscapes[row["model"]] for row in rows},
        overlay,
        title=f"1D loss landscapes, {data_info['dataset']} {split} ({len(y)} examples)",
    )
    files.append(overlay)

    table = format_table(rows, settings["rho"])
    measured = (
        f"Measured on the first {len(y)} {split} examples of {data_info['dataset']}; "
        f"sparse cross-entropy without label smoothing, inference mode. "
        f"Ranked by the top Hessian eigenvalue (power iteration, "
        f"{settings['eigenvalue_iters']} iterations at most), flattest first. "
        f"rho-sharpness: largest loss rise within ||eps|| <= {settings['rho']:g} "
        f"({settings['sharpness_steps']} ascent steps). "
        + (
            f"Hessian trace: Hutchinson, {settings['trace_samples']} Rademacher samples. "
            if settings["trace_samples"]
            else ""
        )
        + f"1D landscape: "
        f"{settings['landscape_points']} points on [-{settings['landscape_span']:g}, "
        f"{settings['landscape_span']:g}] times a filter-normalized random direction "
        f"(seed {settings['seed']}); mean rise = mean of L(w + a d) - L(w)."
    )
    markdown = f"# gmix-flatness\n\n{table}\n\n{measured}\n"
    md_path = os.path.join(output, "flatness.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown)
    json_path = os.path.join(output, "flatness.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "data": data_info,
                "settings": settings,
                "rows": rows,
                "landscapes": {
                    name: {"alphas": r.alphas.tolist(), "losses": r.losses.tolist()}
                    for name, r in landscapes.items()
                },
            },
            f,
            indent=2,
        )
    files = [md_path, json_path] + files
    return FlatnessReport(
        rows=rows, landscapes=landscapes, data=data_info, table=table, files=files
    )
