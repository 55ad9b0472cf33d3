"""Efficient schedules (SPEC.md section 4b, issue 19): accuracy against cost.

Reads the run files that `benchmarks/generalization.py` writes (one JSON per
method or schedule and seed, e.g. `dgmix-k5-r0.3_seed2.json`) and writes
`schedules.md`, `schedules.json` and `schedules.png` beside the
generalization report:

- per data set, every method and schedule: test accuracy (mean and sample
  std over the seeds), its cost per step (CPU seconds of its training over
  ERM's, same data set, mean over the seeds that recorded them: the
  epochs' CPU time, validation every tenth epoch included), and paired
  differences (same seeds) against the full method and against Mixup with
  the two-sided paired t-test's p (scipy);
- one figure: test accuracy against cost per step, one point per method or
  schedule with its seed spread, and the accuracy/cost frontier.

Usage (also run by `python benchmarks/generalization.py --report`):

    python benchmarks/schedule_report.py            # reads/writes benchmarks/results
"""

import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")

# The data sets of the schedule study, and the seeds each is held to.
DATASETS = {
    "mnist1d/4000": dict(title="MNIST-1D", seeds=(0, 1, 2, 3, 4)),
    "cifar10_partial/5438": dict(title="CIFAR-10 (partial) 5,438", seeds=(0, 1, 2)),
}
BASELINES = ("erm", "mixup", "sam")
FULL_METHODS = ("gmix", "dgmix", "bgmix")


def base_method(name):
    """`"dgmix-k5-r0.3"` -> `"dgmix"`."""
    return name.split("-")[0]


def read_runs(folder):
    """{name: {seed: result}} of the budget's runs in one data set's folder
    (budget checks, `..._e100.json`, and sweeps are left out)."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(folder, "*_seed*.json"))):
        name, _, rest = os.path.basename(path)[: -len(".json")].rpartition("_seed")
        if not rest.isdigit():
            continue
        with open(path, encoding="utf-8") as f:
            runs.setdefault(name, {})[int(rest)] = json.load(f)
    return runs


def paired(a, b):
    """Mean of b - a over the seeds both have, in points, and the paired t-test's p."""
    import numpy as np
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    x = np.array([a[s] for s in seeds]) * 100
    y = np.array([b[s] for s in seeds]) * 100
    d = y - x
    p = float(stats.ttest_rel(y, x).pvalue) if len(seeds) > 1 and d.std() > 0 else None
    return {"diff": float(d.mean()), "p": p, "seeds": seeds}


def dataset_rows(runs, seeds):
    """One row per method or schedule: accuracy, cost and the paired differences."""
    import numpy as np

    def accuracies(name):
        return {s: r["test_accuracy"] for s, r in runs.get(name, {}).items() if s in seeds}

    def cpu(name):
        values = [
            r["cpu_seconds"]
            for s, r in runs.get(name, {}).items()
            if s in seeds and r.get("cpu_seconds")
        ]
        return float(np.mean(values)) if values else None

    erm_cpu = cpu("erm")
    order = list(BASELINES) + [m for m in FULL_METHODS if m in runs]
    order += sorted(
        (n for n in runs if n not in order and base_method(n) in FULL_METHODS),
        key=lambda n: (FULL_METHODS.index(base_method(n)), n),
    )
    rows = []
    for name in order:
        acc = accuracies(name)
        if not acc:
            continue
        values = np.array(list(acc.values())) * 100
        own_cpu = cpu(name)
        base = base_method(name)
        rows.append(
            {
                "name": name,
                "method": base,
                "seeds": sorted(acc),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                "cost": own_cpu / erm_cpu if own_cpu and erm_cpu else None,
                "vs_full": paired(accuracies(base), acc) if name != base else None,
                "vs_mixup": paired(accuracies("mixup"), acc) if base in FULL_METHODS else None,
            }
        )
    return rows


def frontier(rows):
    """Names of the rows no other row beats on both accuracy and cost."""
    costed = [r for r in rows if r["cost"] is not None]
    return [
        r["name"]
        for r in costed
        if not any(o["cost"] <= r["cost"] and o["mean"] > r["mean"] for o in costed if o is not r)
    ]


def fmt_diff(result):
    if result is None:
        return "–"
    p = "" if result["p"] is None else f" (p {result['p']:.3f})"
    return f"{result['diff']:+.2f}{p}"


def table(rows, title, seeds, best):
    lines = [
        f"### {title}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; test accuracy in %; cost: CPU time per step over "
        "ERM's; "
        "differences in points, paired by seed, two-sided paired t-test. "
        "On the frontier (*): no other row is both cheaper and more accurate.",
        "",
        "| method or schedule | seeds | test accuracy | cost (x ERM) | − full method | − Mixup |",
        "|---|---:|---|---:|---|---|",
    ]
    for r in rows:
        std = "" if r["std"] is None else f" ± {r['std']:.2f}"
        cost = "–" if r["cost"] is None else f"{r['cost']:.2f}"
        mark = " *" if r["name"] in best else ""
        lines.append(
            f"| {r['name']}{mark} | {len(r['seeds'])} | {r['mean']:.2f}{std} | {cost} "
            f"| {fmt_diff(r['vs_full'])} | {fmt_diff(r['vs_mixup'])} |"
        )
    return lines + [""]


def plot(report, path):
    from keras_gmix import plotting

    keys = [k for k in report if report[k]["rows"]]
    fig, axes = plotting.new_figure(1, len(keys), panel=(6.5, 4.6))
    for ax, key in zip(axes[0], keys):
        rows = [r for r in report[key]["rows"] if r["cost"] is not None]
        best = set(report[key]["frontier"])
        for r in rows:
            color = plotting.method_color(r["name"])
            marker, filled = plotting.method_marker(r["name"])
            ax.errorbar(
                r["cost"],
                r["mean"],
                yerr=r["std"] or 0,
                fmt=marker,
                color=color,
                mfc=color if filled else "white",
                capsize=3,
                ms=7,
            )
            if filled:  # a full method or baseline: labelled by name
                ax.annotate(
                    r["name"],
                    (r["cost"], r["mean"]),
                    textcoords="offset points",
                    xytext=(6, -10),
                    fontsize=plotting.NOTE_SIZE,
                    color=color,
                )
        for schedule, marker in plotting.SCHEDULE_MARKERS.items():
            if any(r["name"].endswith("-" + schedule) for r in rows):
                ax.plot([], [], marker, color=plotting.NEUTRAL_COLOR, mfc="white", label=schedule)
        edge = sorted((r for r in rows if r["name"] in best), key=lambda r: r["cost"])
        if edge:
            ax.plot(
                [r["cost"] for r in edge],
                [r["mean"] for r in edge],
                "--",
                color=plotting.NEUTRAL_COLOR,
                lw=0.8,
                label="frontier",
            )
        plotting.legend(ax, title="schedule (open markers)")
        ax.set_xlabel("cost per step (CPU time, x ERM)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{report[key]['title']}: mean ± std over {len(report[key]['seeds'])} seeds")
    plotting.save(fig, path)


def build(out):
    report = {}
    for key, spec in DATASETS.items():
        rows = dataset_rows(read_runs(os.path.join(out, "generalization_runs", key)), spec["seeds"])
        report[key] = {
            "title": spec["title"],
            "seeds": list(spec["seeds"]),
            "rows": rows,
            "frontier": frontier(rows),
        }
    return report


def write(out, draw=True):
    """Writes schedules.md, .json and (with `draw`) .png into `out` from its run files."""
    report = build(out)
    lines = [
        "# Efficient schedules: accuracy against cost",
        "",
        "Made by `python benchmarks/schedule_report.py` from the run files of "
        "`benchmarks/generalization.py` (see benchmarks/README.md).",
        "",
    ]
    for data in report.values():
        if data["rows"]:
            lines += table(data["rows"], data["title"], data["seeds"], set(data["frontier"]))
    base = os.path.join(out, "schedules")
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    if draw:
        plot(report, base + ".png")
    print("\n".join(lines))
    print(f"wrote {base}.md, .json and .png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="results folder (default: benchmarks/results)"
    )
    write(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
