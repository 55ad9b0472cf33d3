"""`gmix-compare`: several methods and seeds on one recipe, as a table and a chart.

`compare(config, methods, seeds)` trains one `gmix-train` run per method and
seed (`<output>/<method>-seed<seed>/`, each a complete run folder) and
`collect_and_report(dirs)` reads the `results.json` of existing run folders;
both write into the output folder

    results.md    method, runs, mean and std of the test accuracy, seconds
    results.png   the mean test accuracy per method, with std error bars

A comparison that was interrupted continues where it stopped when started
again with the same settings: finished runs are read back, an unfinished one
resumes from its last epoch (BackupAndRestore), the rest are trained.
"""

import dataclasses
import glob
import json
import math
import os
import time

import numpy as np

from keras_gmix import config as config_lib
from keras_gmix import plotting, records
from keras_gmix.gradients import METHODS

# Fields that, when they differ between collected runs, name the table's rows
# besides the method.
LABEL_FIELDS = ("dataset", "model", "train_size", "epochs")

# What may differ between the runs of one row: the seed, and what does not
# define a run (config.RESUMABLE_FIELDS); any other setting of config.json
# that differs between a method's runs splits them into rows.
NOT_SPLITTING = ("seed", "method", "data_fingerprint", *config_lib.RESUMABLE_FIELDS)


@dataclasses.dataclass
class CompareSummary:
    """What `compare` / `collect_and_report` wrote.

    Attributes:
        rows: one dict per row of the table (`label`, `method`, `runs`,
            `accuracy_mean`, `accuracy_std`, `seconds_mean`, `seeds`,
            `folders`).
        results: the `results.json` dicts of every run.
        markdown: the text of results.md.
        table_path: path of results.md.
        chart_path: path of results.png.
    """

    rows: list
    results: list
    markdown: str
    table_path: str
    chart_path: str


def run_folder(output, method, seed):
    return os.path.join(output, f"{method}-seed{seed}")


def _check_plan(methods, seeds):
    if not methods:
        raise ValueError("`methods` is empty.")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"`methods` must be taken from {METHODS}. Received: {method!r}")
    if len(set(methods)) < len(methods):
        raise ValueError(f"`methods` has duplicates: {list(methods)}")
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"`seeds` must be distinct integers, at least one. Received: {seeds}")


def _same_settings(saved, planned):
    """Whether a run's saved config is the run now asked for (`planned`, a TrainConfig)."""
    from keras_gmix import config as config_lib

    return not config_lib.resume_differences(saved, planned)


def _plan(config, methods, seeds, output):
    """Every run of the comparison, checked before anything is written.

    Returns:
        A list of `(folder, TrainConfig, state)`, state one of "training",
        "resuming", "finished, read back".

    Raises:
        ValueError: a run folder holds a run with other settings.
        records.RunFolderInUseError: a run folder is in use by another process
            (another gmix-compare or gmix-train on it).
    """
    from keras_gmix import config as config_lib

    plan = []
    for method in methods:
        for seed in seeds:
            folder = run_folder(output, method, seed)
            planned = dataclasses.replace(
                config, method=method, seed=seed, output=folder, resume=False
            )
            finished = os.path.exists(os.path.join(folder, "results.json"))
            unfinished = os.path.exists(os.path.join(folder, "backup"))
            if os.path.isdir(folder):
                with records.hold_run_folder(folder):  # refused now if another process has it
                    saved = config_lib.saved_config(folder)
            else:
                saved = None
            if (
                (finished or unfinished)
                and saved is not None
                and not _same_settings(saved, planned)
            ):
                raise ValueError(
                    f"{folder} holds a run with other settings than this comparison's: "
                    "choose another --output."
                )
            state = (
                "finished, read back"
                if finished and not unfinished
                else ("resuming" if unfinished else "training")
            )
            plan.append(
                (folder, dataclasses.replace(planned, resume=finished or unfinished), state)
            )
    return plan


def compare(config, methods=METHODS, seeds=(0,), output=None, callbacks=None):
    """Trains every method with every seed on `config`'s recipe; writes the report.

    Every run folder is checked first (settings, and that no other process
    is writing it), and the output folder is held (`records.hold_run_folder`)
    for the whole comparison: a second comparison into it is refused before
    it writes anything.

    Args:
        config: a `keras_gmix.config.TrainConfig`; its `method`, `seed`,
            `output` and `resume` are replaced per run.
        methods: the methods to run. Defaults to all six.
        seeds: the seeds to run. Defaults to `(0,)`.
        output: folder of the runs and the report. Defaults to
            `runs/compare-<time>`.
        callbacks: extra Keras callbacks for every run (`train.run`'s).
            Defaults to `None`.

    Returns:
        A `CompareSummary`.
    """
    from keras_gmix import config as config_lib

    methods, seeds = list(methods), [int(s) for s in seeds]
    _check_plan(methods, seeds)
    config.validate()
    # Resolved up front: a backend Keras does not run on is refused before
    # anything is written, and compare.json names the one the runs use.
    config = dataclasses.replace(config, backend=config_lib.resolve_backend(config))
    output = output or os.path.join("runs", time.strftime("compare-%Y%m%d-%H%M%S"))
    records.check_output_folder(output)
    os.makedirs(output, exist_ok=True)
    with records.hold_run_folder(output):
        plan = _plan(config, methods, seeds, output)
        return _compare_held(config, methods, seeds, output, plan, callbacks)


def _compare_held(config, methods, seeds, output, plan, callbacks):
    import keras

    from keras_gmix import train

    records.atomic_write_text(
        os.path.join(output, "compare.json"),
        json.dumps({"config": config.to_dict(), "methods": methods, "seeds": seeds}, indent=2),
    )
    all_results = []
    for folder, run_config, state in plan:
        if config.verbose:
            print(
                f"gmix-compare: {run_config.method}, seed {run_config.seed}: {state} ({folder})",
                flush=True,
            )
        all_results.append(train.run(run_config, callbacks=callbacks))
        keras.backend.clear_session()
    title = f"gmix-compare: {config.model} on {config.dataset}, {config.epochs} epochs"
    return write_report(all_results, output, title=title)


def find_results(dirs):
    """The results.json dicts of run folders (each folder searched recursively)."""
    found = []
    for folder in dirs:
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"No such run folder: {folder!r}")
        direct = os.path.join(folder, "results.json")
        paths = (
            [direct]
            if os.path.exists(direct)
            else sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True))
        )
        if not paths:
            raise FileNotFoundError(f"No results.json in {folder!r} or below it.")
        for path in paths:
            results = records.read_json(
                path, "restore it from a copy, or leave its run folder out of --collect"
            )
            results.setdefault("output", os.path.dirname(path))
            results["settings"] = _run_settings(os.path.dirname(path))
            found.append(results)
    return found


def _run_settings(folder):
    """The settings of the config.json in run folder `folder` that define the
    run beyond its seed (empty without a config.json)."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return {}
    saved = records.read_json(path, "restore it from a copy, or leave its run folder out")
    return {key: value for key, value in saved.items() if key not in NOT_SPLITTING}


def _differing_settings(runs):
    """The names of the settings whose values differ between `runs`."""
    names = sorted({name for r in runs for name in r.get("settings", {})})
    return [
        name
        for name in names
        if name not in LABEL_FIELDS
        and len({json.dumps(r.get("settings", {}).get(name), sort_keys=True) for r in runs}) > 1
    ]


def collect_and_report(dirs, output=None):
    """Reads existing runs' results.json and writes results.md and results.png.

    Args:
        dirs: run folders, or folders holding run folders (e.g. a
            gmix-compare output).
        output: where to write. Defaults to the folder when `dirs` is one
            folder; required otherwise.

    Returns:
        A `CompareSummary`.
    """
    dirs = list(dirs)
    if output is None:
        if len(dirs) != 1:
            raise ValueError(
                "Collecting several folders needs --output: where to write results.md."
            )
        output = dirs[0]
    results = find_results(dirs)
    records.check_output_folder(output)
    os.makedirs(output, exist_ok=True)
    return write_report(results, output, title="gmix-compare: collected runs")


def summarize(results):
    """Groups runs into table rows: per method, per differing dataset, model,
    size or length, and per any other setting that differs between a
    method's runs (runs of other learning rates are not averaged as seeds)."""
    varying = [f for f in LABEL_FIELDS if len({str(r.get(f)) for r in results}) > 1]
    by_method = {}
    for r in results:
        by_method.setdefault(r.get("method"), []).append(r)
    settings = {method: _differing_settings(runs) for method, runs in by_method.items()}
    groups = {}
    for r in results:
        named = [str(r.get(f)) for f in varying] + [
            f"{name}={r.get('settings', {}).get(name)!r}" for name in settings[r.get("method")]
        ]
        groups.setdefault((r.get("method"),) + tuple(named), []).append(r)

    def order(key):
        method = key[0]
        return (METHODS.index(method) if method in METHODS else len(METHODS), str(method)) + key[1:]

    rows = []
    for key in sorted(groups, key=order):
        runs = groups[key]
        accuracy = np.array([r["test_accuracy"] for r in runs], dtype=np.float64)
        seconds = np.array([r.get("seconds", math.nan) for r in runs], dtype=np.float64)
        extra = ", ".join(
            [f"{f}={v}" for f, v in zip(varying, key[1:])] + list(key[1 + len(varying) :])
        )
        rows.append(
            {
                "label": key[0] + (f" ({extra})" if extra else ""),
                "method": key[0],
                "runs": len(runs),
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_std": float(accuracy.std(ddof=1)) if len(runs) > 1 else math.nan,
                "seconds_mean": float(np.nanmean(seconds))
                if np.isfinite(seconds).any()
                else math.nan,
                "seeds": [r.get("seed") for r in runs],
                "folders": [r.get("output") for r in runs],
            }
        )
    return rows


def format_table(rows):
    lines = [
        "| method | runs | test accuracy (mean) | std | seconds (mean per run) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        std = "–" if math.isnan(row["accuracy_std"]) else f"{row['accuracy_std']:.4f}"
        seconds = "–" if math.isnan(row["seconds_mean"]) else f"{row['seconds_mean']:.1f}"
        lines.append(
            f"| {row['label']} | {row['runs']} | {row['accuracy_mean']:.4f} | {std} | {seconds} |"
        )
    return "\n".join(lines)


def plot_results(rows, path, title=None):
    """Bar chart of the mean test accuracy per row, with std error bars, as PNG."""
    means = np.array([r["accuracy_mean"] for r in rows])
    stds = np.nan_to_num(np.array([r["accuracy_std"] for r in rows]))
    figure, [[axes]] = plotting.new_figure(panel=(max(4.0, 1.1 * len(rows) + 1.5), 4.0))
    positions = np.arange(len(rows))
    methods = [r.get("method", r["label"]) for r in rows]
    colors = plotting.colors_for(methods)
    axes.bar(positions, means, yerr=stds, capsize=4, color=[colors[m] for m in methods])
    for x, m, s in zip(positions, means, stds):
        axes.text(x, m + s, f"{m:.3f}", ha="center", va="bottom", fontsize=plotting.NOTE_SIZE)
    low, high = float(np.min(means - stds)), float(np.max(means + stds))
    pad = max(0.01, 0.2 * (high - low))
    axes.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.3 * pad)
    axes.set_xticks(positions)
    axes.set_xticklabels(
        [r["label"] for r in rows],
        rotation=20 if len(rows) > 4 else 0,
        ha="right" if len(rows) > 4 else "center",
    )
    axes.set_ylabel("test accuracy (mean ± std over runs)")
    if title:
        axes.set_title(title)
    return plotting.save(figure, path)


def write_report(results, output, title="gmix-compare"):
    """Writes results.md and results.png for a list of results.json dicts."""
    if not results:
        raise ValueError("No runs to report.")
    rows = summarize(results)
    table = format_table(rows)
    folders = "\n".join(
        f"- {row['label']}: "
        + ", ".join(os.path.relpath(p, output) if p else "?" for p in row["folders"])
        for row in rows
    )
    markdown = (
        f"# {title}\n\n{table}\n\n"
        "Test accuracy: the final model on the test split. std: sample standard "
        "deviation over the runs (seeds), – for a single run. seconds: training "
        "time per run (fit, per-epoch validation included).\n\n"
        f"Runs:\n{folders}\n"
    )
    table_path = os.path.join(output, "results.md")
    with open(table_path, "w", encoding="utf-8") as f:
        f.write(markdown)
    chart_path = plot_results(rows, os.path.join(output, "results.png"), title=title)
    return CompareSummary(
        rows=rows, results=results, markdown=markdown, table_path=table_path, chart_path=chart_path
    )
