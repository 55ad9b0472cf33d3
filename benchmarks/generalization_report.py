"""The report of benchmarks/generalization.py: generalization.md, .json and the figures.

Reads the per-run files under `<out>/generalization_runs/` (the runs of the
plain methods; schedule variants such as `gmix-k5_seed0.json` are not in it
yet) and the reasons for the budgets from benchmarks/README.md.
"""

import datetime
import os
import platform
import re
import subprocess

from generalization_plan import (
    BASELINES,
    BUDGETS,
    DATASETS,
    GMIX_FAMILY,
    METHODS,
    budget_epochs,
    chosen_hparams,
    fmt,
    is_resumable,
    parse_dataset,
    read_json,
    run_dir,
    sweep_dataset,
    sweep_results,
    write_json,
)

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
REASONS_HEADING = "### Why these budgets"


def budget_reasons(readme=README):
    """{data-set key: why its budget}, from the README's bullets under REASONS_HEADING.

    A bullet reads "- `key`: the reason." and may wrap onto indented lines;
    the report quotes the reason (without its final period).
    """
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if REASONS_HEADING not in lines:
        raise ValueError(f"{readme} has no {REASONS_HEADING!r} section: the report quotes it.")
    reasons, key = {}, None
    for line in lines[lines.index(REASONS_HEADING) + 1 :]:
        if line.startswith("#"):
            break
        bullet = re.match(r"- `([^`]+)`: (.*)", line)
        if bullet:
            key = bullet.group(1)
            reasons[key] = bullet.group(2).strip()
        elif key and line.startswith("  ") and line.strip():
            reasons[key] += " " + line.strip()
        else:
            key = None
    missing = [k for k in DATASETS if k not in reasons]
    if missing:
        raise ValueError(f"{readme}, {REASONS_HEADING!r}: no reason for {missing}.")
    return {k: text[:-1] if text.endswith(".") else text for k, text in reasons.items()}


def recorded_budgets(reasons):
    """BUDGETS as the report records them (no sweep grid), each with its reason:
    `why` for the data set's first subset, `why_by_subset` where another differs."""
    budgets = {}
    for name, budget in BUDGETS.items():
        keys = [k for k in DATASETS if parse_dataset(k)[0] == name]
        why = reasons[keys[0]]
        by_subset = {parse_dataset(k)[1]: reasons[k] for k in keys[1:] if reasons[k] != why}
        entry = {}
        for field, value in budget.items():
            if field == "sweep":
                continue
            entry[field] = value
            if field == "eval_every":  # where the reasons stood when BUDGETS held them
                entry["why"] = why
                if by_subset:
                    entry["why_by_subset"] = by_subset
        budgets[name] = entry
    return budgets


def machine():
    cpu = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def paired_test(a, b):
    """Mean difference b - a over paired seeds, and the two-sided paired t-test p-value
    (None with fewer than two pairs, or when every pair differs by the same amount)."""
    import numpy as np
    from scipy import stats

    d = np.asarray(b, float) - np.asarray(a, float)
    if len(d) < 2:
        return float(d.mean()) if len(d) else None, None
    if d.std(ddof=1) == 0:
        return float(d.mean()), None
    return float(d.mean()), float(stats.ttest_rel(b, a).pvalue)


def flattening(loss):
    """Relative drop of the training loss from the second-to-last tenth of the epochs to the last.

    Window means, because the Mixup family's epoch loss is noisy (one lambda
    per batch): mean(loss[-2k:-k]) / mean(loss[-k:]) - 1 with k = epochs / 10.
    """
    k = max(1, len(loss) // 10)
    last = sum(loss[-k:]) / k
    before = sum(loss[-2 * k : -k]) / max(1, len(loss[-2 * k : -k]))
    return before / max(abs(last), 1e-12) - 1.0


def late_gain(result):
    """Test accuracy at the end minus at 70% of the epochs (from the every-few-epochs curve)."""
    acc = result["history"].get("val_accuracy", [])
    if len(acc) < 2:
        return float("nan")
    return acc[-1] - acc[int(round(0.7 * len(acc))) - 1]


def method_rows(runs, seeds):
    """Per-method statistics of {(method, seed): result}: accuracy, diffs, p-values, eigenvalues."""
    import numpy as np

    rows = {}
    erm = {s: r["test_accuracy"] for (m, s), r in runs.items() if m == "erm"}
    for method in METHODS:
        mine = {s: runs[(method, s)] for s in seeds if (method, s) in runs}
        acc = [r["test_accuracy"] for r in mine.values()]
        row = {
            "seeds_done": sorted(mine),
            "missing_seeds": [s for s in seeds if s not in mine],
            "test_accuracy": acc,
            "mean": float(np.mean(acc)) if acc else None,
            "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
            "seconds": float(np.mean([r["seconds"] for r in mine.values()])) if mine else None,
            # Recorded from the third session on (older runs have none).
            "cpu_seconds": float(np.mean(cpu))
            if (cpu := [r["cpu_seconds"] for r in mine.values() if "cpu_seconds" in r])
            else None,
            "eigenvalue": [r["hessian_top_eigenvalue"]["value"] for r in mine.values()],
            "final_train_loss": [r["history"]["loss"][-1] for r in mine.values()],
            "flattening": [flattening(r["history"]["loss"]) for r in mine.values()],
            "late_test_gain": [late_gain(r) for r in mine.values()],
            "rho": next(iter(mine.values()))["config"]["rho"] if mine else None,
            "alpha": next(iter(mine.values()))["config"]["alpha"] if mine else None,
            "epochs": next(iter(mine.values()))["config"]["epochs"] if mine else None,
        }
        paired = [s for s in mine if s in erm]
        if method != "erm" and paired:
            diff, p = paired_test(
                [erm[s] for s in paired], [mine[s]["test_accuracy"] for s in paired]
            )
            row.update(diff_to_erm=diff, p_value=p, paired_seeds=paired)
        for base in BASELINES:
            other = {s: r["test_accuracy"] for (m, s), r in runs.items() if m == base}
            both = [s for s in mine if s in other]
            if method in GMIX_FAMILY and both:
                diff, p = paired_test(
                    [other[s] for s in both], [mine[s]["test_accuracy"] for s in both]
                )
                row[f"vs_{base}"] = {"diff": diff, "p_value": p, "paired_seeds": both}
        rows[method] = row
    return rows


def collect(out, seeds):
    """Everything the report needs, as a JSON-able dict."""

    report = {"datasets": {}, "sweeps": {}}
    finished = []  # when each run read here finished (ISO 8601, UTC)
    for key in DATASETS:
        name, subset = parse_dataset(key)
        folder = run_dir(out, name, subset)
        runs = {}
        for method in METHODS:
            for seed in seeds:
                path = os.path.join(folder, f"{method}_seed{seed}.json")
                if os.path.exists(path):
                    runs[(method, seed)] = read_json(path)
        rows = method_rows(runs, seeds)
        checks, other_runs = [], {}
        for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            stem, _, epochs = fname[: -len(".json")].rpartition("_e")
            if fname.endswith(".json") and stem and epochs.isdigit():
                r = read_json(os.path.join(folder, fname))
                finished.append(r.get("finished"))
                other_runs.setdefault(int(epochs), {})[(r["method"], r["seed"])] = r
                ref = runs.get((r["method"], r["seed"]))
                checks.append(
                    {
                        "method": r["method"],
                        "seed": r["seed"],
                        "epochs": r["config"]["epochs"],
                        "test_accuracy": r["test_accuracy"],
                        "seconds": r["seconds"],
                        "budget_epochs": ref["config"]["epochs"] if ref else None,
                        "budget_test_accuracy": ref["test_accuracy"] if ref else None,
                        # Whether a longer budget flattens the end of training more.
                        "loss_drop": flattening(r["history"]["loss"]),
                        "budget_loss_drop": flattening(ref["history"]["loss"]) if ref else None,
                    }
                )
        finished.extend(r.get("finished") for r in runs.values())
        report["datasets"][key] = {
            "rows": rows,
            "budget_checks": checks,
            "other_budgets": {e: method_rows(r, seeds) for e, r in sorted(other_runs.items())},
            "curves": {f"{m}_seed{s}": r["history"]["loss"] for (m, s), r in runs.items()},
            "test_curves": {
                f"{m}_seed{s}": r["history"].get("val_accuracy", []) for (m, s), r in runs.items()
            },
        }
    for name in BUDGETS:
        found = sweep_results(out, name)
        alpha, rho_sam, rho_gmix = chosen_hparams(out, name)
        report["sweeps"][name] = {
            "on": "%s:%s" % sweep_dataset(name),
            "epochs": BUDGETS[name]["sweep_epochs"],
            "grid": BUDGETS[name]["sweep"],
            "results": [
                {"method": m, "rho": r, "alpha": a, "val_accuracy": v}
                for (m, r, a), v in sorted(found.items())
            ],
            "chosen": {"alpha": alpha, "rho_sam": rho_sam, "rho_gmix": rho_gmix},
        }
    # The report's date is its newest run's, not the clock's: rebuilt from
    # the same run files, the report is the same file.
    report["last_run_finished"] = max(filter(None, finished), default=None)
    return report


def pct(x):
    return "—" if x is None else f"{100 * x:.2f}"


def accuracy_cell(row):
    """Mean ± std in percent; the mean alone when one seed gives no std."""
    return pct(row["mean"]) + ("" if row["std"] is None else f" ± {pct(row['std'])}")


def points(diff):
    """A difference of accuracies in signed percentage points; blank when unknown."""
    return "" if diff is None else f"{100 * diff:+.2f}"


def p_cell(p_value):
    return "" if p_value is None else f"{p_value:.3f}"


def short_name(key):
    name, subset = parse_dataset(key)
    return "MNIST-1D" if name == "mnist1d" else f"CIFAR-10 (partial) {int(subset):,}"


def section_title(key):
    name, _ = parse_dataset(key)
    return short_name(key) + (
        " (4,000 train / 10,000 test)" if name == "mnist1d" else " training images, 1,017 test"
    )


def summary_lines(report, n_seeds):
    """The two tables README's Benchmarks section shows: every method's accuracy
    on every data set, and the G-Mix family against Mixup and SAM."""
    keys = list(report["datasets"])

    def accuracy(r):
        if not r["seeds_done"]:
            return "—"
        cell = accuracy_cell(r)
        done = len(r["seeds_done"])
        return cell if done == n_seeds else f"{cell} ({done}/{n_seeds} seeds)"

    def versus(v):
        if v is None:
            return "—"
        n = len(v["paired_seeds"])
        notes = ([] if n == n_seeds else [f"{n} seed" + "s" * (n > 1)]) + (
            [] if v["p_value"] is None else [f"p {p_cell(v['p_value'])}"]
        )
        return points(v["diff"]) + (f" ({', '.join(notes)})" if notes else "")

    lines = [
        f"Test accuracy %, mean ± std over seeds ({n_seeds} per method):",
        "",
        "| method | " + " | ".join(short_name(k) for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for method in METHODS:
        lines.append(
            f"| {method} | "
            + " | ".join(accuracy(report["datasets"][k]["rows"][method]) for k in keys)
            + " |"
        )
    lines += [
        "",
        "The G-Mix family minus Mixup and minus SAM, test accuracy in percentage points "
        "(seeds paired; two-sided paired t-test p):",
        "",
        "| data set | baseline | " + " | ".join(GMIX_FAMILY) + " |",
        "|---|---|" + "---|" * len(GMIX_FAMILY),
    ]
    for k in keys:
        for base, label in BASELINES.items():
            lines.append(
                f"| {short_name(k)} | {label} | "
                + " | ".join(
                    versus(report["datasets"][k]["rows"][m].get(f"vs_{base}")) for m in GMIX_FAMILY
                )
                + " |"
            )
    return lines


def last_run_text(finished):
    """'2026-11-27 18:34 UTC' from an ISO 8601 UTC time; '–' for none."""
    if not finished:
        return "–"
    return datetime.datetime.fromisoformat(finished).strftime("%Y-%m-%d %H:%M UTC")


def write_report(args, draw=True):
    import numpy as np

    report = collect(args.out, args.seeds)
    report["machine"] = machine()
    reasons = budget_reasons()
    report["budgets"] = recorded_budgets(reasons)
    report["command"] = (
        "python benchmarks/generalization.py --sweep && python benchmarks/generalization.py && "
        "python benchmarks/generalization.py --report"
    )
    lines = [
        "# Generalization: the six methods on real data with little of it",
        "",
        "Generated by `python benchmarks/generalization.py --report` from the per-run files in",
        "`benchmarks/results/generalization_runs/` (one JSON per run; see benchmarks/README.md).",
        "",
        f"- Command: `{report['command']}` (each step skips runs whose file exists)",
        f"- Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, CPU only, "
        "shared with other jobs (runs at `nice -n 19`, so times are upper bounds; from the third "
        "session on two runs shared the 2 cores, see the CPU seconds)",
        f"- Last run finished: {last_run_text(report['last_run_finished'])}",
        "",
        "## Summary",
        "",
        *summary_lines(report, len(args.seeds)),
        "",
    ]
    for key, data in report["datasets"].items():
        name, subset = parse_dataset(key)
        b = BUDGETS[name]
        rows = data["rows"]
        model_text = (
            "1D CNN (5.2k parameters), no augmentation"
            if name == "mnist1d"
            else "ResNet-8 (fused BN), pad-crop + flip"
        )
        lines += [
            f"## {section_title(key)}",
            "",
            f"Budget: {rows['erm']['epochs'] or budget_epochs(name, subset)} epochs, batch "
            f"{b['batch_size']}, SGD "
            f"Nesterov 0.9, lr {b['learning_rate']} cosine to 0, weight decay {b['weight_decay']}; "
            f"{model_text}. "
            "Hessian: top eigenvalue of the training loss (no weight decay term) on the first "
            f"{b['eigen_examples']} training examples, BN in inference mode, at most "
            f"{b['eigen_iters']} power iterations."
            + (
                " Training stream keyed by (seed, epoch), with a checkpoint every epoch: a "
                "killed run "
                "resumed from its last epoch (`s / run` sums its attempts' epochs)."
                if is_resumable(name, subset)
                else ""
            ),
            "",
            f"Why this budget: {reasons[key]}.",
            "",
            "| method | rho | alpha | seeds | test acc. % (mean ± std) | vs ERM (pp) | paired p "
            "| top Hessian eig. | s / run (CPU s) | train-loss drop, epochs 81-90% to 91-100% | "
            "test acc. gain, 70% to 100% of epochs (pp) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method in METHODS:
            r = rows[method]
            if not r["seeds_done"]:
                lines.append(f"| {method} | | | 0/{len(args.seeds)} | **missing** | | | | | | |")
                continue
            lines.append(
                f"| {method} | {fmt(r['rho'])} | {fmt(r['alpha'])} | "
                f"{len(r['seeds_done'])}/{len(args.seeds)}"
                + (f" (missing {r['missing_seeds']})" if r["missing_seeds"] else "")
                + f" | {accuracy_cell(r)} | {points(r.get('diff_to_erm'))} | "
                f"{p_cell(r.get('p_value'))}"
                # The sample std, as for the accuracies.
                + f" | {np.mean(r['eigenvalue']):.1f}"
                + (f" ± {np.std(r['eigenvalue'], ddof=1):.1f}" if len(r["eigenvalue"]) > 1 else "")
                + f" | {r['seconds']:.0f}"
                + ("" if r["cpu_seconds"] is None else f" ({r['cpu_seconds']:.0f})")
                + f" | {100 * np.mean(r['flattening']):.1f}%"
                + f" | {100 * np.mean(r['late_test_gain']):+.2f} |"
            )
        lines += [
            "",
            "G-Mix family against the baselines (paired by seed; two-sided paired t-test):",
            "",
            "| method | vs Mixup (pp) | p | vs SAM (pp) | p |",
            "|---|---|---|---|---|",
        ]
        for method in GMIX_FAMILY:
            cells = []
            for base in BASELINES:
                v = rows[method].get(f"vs_{base}")
                if v is None:
                    cells += ["—", ""]
                else:
                    cells += [
                        f"{points(v['diff'])} (n={len(v['paired_seeds'])})",
                        p_cell(v["p_value"]),
                    ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for epochs, other in data["other_budgets"].items():
            lines += [
                "",
                f"Budget check at {epochs} epochs (otherwise the same runs), test accuracy %:",
                "",
                "| method | seeds | mean ± std | vs ERM (pp) | p | vs Mixup (pp) | p | vs SAM "
                "(pp) | p | top Hessian eig. |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for method in METHODS:
                r = other[method]
                if not r["seeds_done"]:
                    continue
                cells = [accuracy_cell(r), points(r.get("diff_to_erm")), p_cell(r.get("p_value"))]
                for base in BASELINES:
                    v = r.get(f"vs_{base}")
                    cells += ["", ""] if v is None else [points(v["diff"]), p_cell(v["p_value"])]
                cells.append(f"{np.mean(r['eigenvalue']):.1f}")
                lines.append(f"| {method} | {len(r['seeds_done'])} | " + " | ".join(cells) + " |")
        paired_checks = [c for c in data["budget_checks"] if c["budget_test_accuracy"] is not None]
        if paired_checks:
            data = dict(data, budget_checks=paired_checks)
            lines += [
                "",
                (
                    "Budget check, per seed: the same seed at the budget and at another number "
                    "of epochs, test "
                    "accuracy % and training-loss drop from epochs 81-90% to 91-100% of each run:"
                ),
                "",
                "| method | seed | budget epochs | acc. | train-loss drop | check epochs | acc. "
                "| train-loss drop | check − budget (pp) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for c in data["budget_checks"]:
                diff = points(
                    None
                    if c["budget_test_accuracy"] is None
                    else c["test_accuracy"] - c["budget_test_accuracy"]
                )
                lines.append(
                    f"| {c['method']} | {c['seed']} | {c['budget_epochs'] or '—'} | "
                    f"{pct(c['budget_test_accuracy'])}"
                    f" | {c['budget_loss_drop']:.1%} | {c['epochs']} | {pct(c['test_accuracy'])}"
                    f" | {c['loss_drop']:.1%} | {diff} |"
                )
        lines.append("")
    lines += [
        "## Sweep (validation split: a class-balanced 20% of the training set, seed 0)",
        "",
        "alpha by Mixup; rho by SAM, and by G-Mix at Mixup's best alpha; BG-Mix and DG-Mix take",
        "G-Mix's (alpha, rho). ERM ignores both (logged as rho 0, alpha 1); its row is the "
        "reference.",
        "",
    ]
    for name, sw in report["sweeps"].items():
        lines += [
            f"### {name} (on {sw['on']} minus its validation split, {sw['epochs']} epochs)",
            "",
            "| method | rho | alpha | val acc. % |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {fmt(r['rho'])} | {fmt(r['alpha'])} | {pct(r['val_accuracy'])} |"
            for r in sw["results"]
        ] or ["| (no sweep runs yet) | | | |"]
        c = sw["chosen"]
        lines += [
            "",
            f"Chosen: alpha = {c['alpha']}, rho (SAM) = {c['rho_sam']}, rho (G-Mix family) = "
            f"{c['rho_gmix']}" + (" (None: sweep incomplete)" if None in c.values() else ""),
            "",
        ]
    lines += [
        "## Figures",
        "",
        "- `generalization.png`: mean test accuracy per method and data set (error bars: std "
        "over seeds).",
        "- `generalization_curves.png`: training loss per epoch, 5-epoch running mean (on the "
        "mixed batch",
        "  for the Mixup family, so levels differ between families by construction), and test "
        "accuracy",
        "  every 10 epochs (monitoring only: nothing is chosen on the test set).",
        "",
    ]
    base = os.path.join(args.out, "generalization")
    with open(base + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    write_json(base + ".json", report)
    if draw:
        plot(report, base)
    print("\n".join(lines))


def plot(report, base):
    import numpy as np

    from keras_gmix import plotting

    keys = list(report["datasets"])
    fig, axes = plotting.new_figure(1, len(keys), panel=(5, 3.6))
    for ax, key in zip(axes[0], keys):
        rows = report["datasets"][key]["rows"]
        means = [100 * (rows[m]["mean"] or 0) for m in METHODS]
        stds = [100 * (rows[m]["std"] or 0) for m in METHODS]
        ax.bar(
            METHODS,
            means,
            yerr=stds,
            capsize=3,
            color=[plotting.method_color(m) for m in METHODS],
        )
        done = [m for m in METHODS if rows[m]["mean"] is not None]
        if done:
            lo = min(100 * rows[m]["mean"] for m in done)
            hi = max(100 * rows[m]["mean"] for m in done)
            ax.set_ylim(max(0, lo - 4), min(100, hi + 3))
        else:
            ax.set_ylim(0, 100)
        for i, m in enumerate(METHODS):
            n = len(rows[m]["seeds_done"])
            ax.text(
                i,
                ax.get_ylim()[0],
                "missing" if n == 0 else f"n={n}",
                ha="center",
                va="bottom",
                fontsize=plotting.NOTE_SIZE,
            )
        ax.set_title(short_name(key))
        ax.set_ylabel("test accuracy (%)")
    plotting.save(fig, base + ".png")

    fig, axes = plotting.new_figure(2, len(keys), panel=(5, 3.5))
    for j, key in enumerate(keys):
        data = report["datasets"][key]
        for name, loss in data["curves"].items():
            method = name.split("_seed")[0]
            first = name.endswith("_seed0")
            # 5-epoch running mean: one lambda per batch makes the Mixup family's epoch loss jumpy.
            k = min(5, len(loss))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            axes[0, j].plot(
                np.arange(k, len(loss) + 1),
                smooth,
                color=plotting.method_color(method),
                lw=1,
                label=method if first else None,
            )
            acc = data["test_curves"][name]
            if acc:
                every = max(1, len(loss) // len(acc))
                axes[1, j].plot(
                    every * np.arange(1, len(acc) + 1),
                    100 * np.asarray(acc),
                    color=plotting.method_color(method),
                    lw=1,
                    marker=".",
                    label=method if first else None,
                )
        if not data["curves"]:
            for ax in axes[:, j]:
                ax.text(
                    0.5,
                    0.5,
                    "no finished runs yet",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
        else:
            axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"{short_name(key)}: training loss (5-epoch mean)")
        axes[1, j].set_title(f"{short_name(key)}: test accuracy (%)")
        axes[1, j].set_xlabel("epoch")
        if data["curves"]:
            plotting.legend(axes[0, j])
    plotting.save(fig, base + "_curves.png")
