"""The report of benchmarks/step_time.py: ratios, targets, step_time.md and .json.

`summarize` turns the timed configurations of a run into JSON rows of
paired ratios; `check_targets` compares them with the step-cost targets;
`tables` and `write_results` write the report. `backend_results`,
`backend_tables` and `write_backend_results` do the same for
`step_time.py --backends`, whose processes (one per backend per round)
each wrote such rows. Nothing here imports
TensorFlow, so `step_time.py --report` rebuilds OUTPUT.md from OUTPUT.json
quickly.
"""

import json
import os
import statistics
from typing import NamedTuple

# Rows besides GMixModel's methods (benchmarks/step_time.py builds them).
KERAS_FIT = "keras fit"
NAIVE_SAM = "naive sam"
TFK_FIT = "tf-keras fit"
TFK_SAM = "tf-keras SAM"
PEER_BN = "tf-keras"  # the BatchNorm column of the tf-keras rows


def median(values):
    return statistics.median(values) if values else None


def round_values(config, cpu=False):
    """Per round: the median step time, or with a schedule the amortized
    (full + (k - 1) * cheap) / k from the median full and cheap steps."""
    rounds = config.round_cpu_times if cpu else config.round_times
    if config.perturb_every == 1:
        return [median(times) for times in rounds]
    k = config.perturb_every
    values = []
    for times, full in zip(rounds, config.round_full):
        full_times = [t for t, f in zip(times, full) if f]
        cheap_times = [t for t, f in zip(times, full) if not f]
        if not full_times or not cheap_times:
            raise ValueError(
                f"{config!r}: a round needs full and cheap steps; time at least {k} steps per round"
            )
        values.append((median(full_times) + (k - 1) * median(cheap_times)) / k)
    return values


def round_ratios(a, b, cpu=False):
    """Per round: a's round value / b's round value (see `round_values`)."""
    return [x / y for x, y in zip(round_values(a, cpu), round_values(b, cpu))]


def paired_ratio(a, b, cpu=False):
    """Median over rounds of (a's round median / b's round median)."""
    if a is None or b is None:
        return None
    return median(round_ratios(a, b, cpu))


def ratio_fields(name, config, other):
    """The row fields of `config`'s paired ratio to `other`: `name` (wall
    clock), `name_cpu` and `name_rounds` (per round); `name` alone, None,
    when `other` was not measured, and 1.0 when it is `config` itself."""
    if other is None or other is config:
        return {name: None if other is None else 1.0}
    return {
        name: paired_ratio(config, other),
        name + "_cpu": paired_ratio(config, other, cpu=True),
        name + "_rounds": [round(r, 3) for r in round_ratios(config, other)],
    }


def compared_rows(config):
    """{ratio name: the key of the row `config` is compared with}, in the
    order the JSON rows list them."""
    model, bn, jit, method = config.key
    if bn == PEER_BN:
        return {"x_own_fit": (model, bn, jit, TFK_FIT)}
    compared = {"x_erm": (model, bn, jit, "erm"), "x_keras_fit": (model, bn, jit, KERAS_FIT)}
    if bn == "fused":
        compared["fused_x_stock"] = (model, "stock", jit, method)
    if method == "sam":
        compared["x_naive_sam"] = (model, bn, jit, NAIVE_SAM)
        compared["x_tf_keras_sam"] = (model, PEER_BN, jit, TFK_SAM)
    if method in ("erm", KERAS_FIT):
        compared["x_tf_keras_fit"] = (model, PEER_BN, jit, TFK_FIT)
    return compared


def summarize(configs, run):
    """One JSON row per configuration; ratios are within this run."""
    by_key = {c.key: c for c in configs}
    rows = []
    for c in configs:
        wall = [t for block in c.round_times for t in block]
        row = {
            "model": c.model,
            "batchnorm": c.bn,
            "jit_compile": c.jit,
            "method": c.method,
            "run": run,
            "median_ms": 1000 * median(round_values(c)),
            "cpu_median_ms": 1000 * median(round_values(c, cpu=True)),
            "round_medians_ms": [round(1000 * v, 1) for v in round_values(c)],
            "cpu_round_medians_ms": [round(1000 * v, 1) for v in round_values(c, cpu=True)],
            "steps_timed": len(wall),
            "first_call_s": c.first_call_s,
            "step_peak_mb": None if c.step_peak is None else c.step_peak / 2**20,
            "final_loss": c.last_loss,
        }
        for name, other_key in compared_rows(c).items():
            row.update(ratio_fields(name, c, by_key.get(other_key)))
        rows.append({k: v for k, v in row.items() if v is not None or not k.startswith("x_")})
    return rows


class Target(NamedTuple):
    """A limit on one method's step cost: a ratio of its row below `limit`."""

    label: str  # as the reports print it, with the issue that set the limit
    method: str
    ratio: str  # the row's ratio it limits (see `compared_rows`)
    limit: float
    fused_only: bool = False  # only rows with fused BatchNormalization
    # The CPU-time ratio decides; otherwise the wall-clock one, and the
    # verdict is "unclear" when the CPU-time ratio falls on the other side.
    on_cpu: bool = False


# A full step's cost over ERM's, with stock or fused BatchNormalization.
FULL_STEP_LIMITS = {"sam": 2.1, "gmix": 2.1, "bgmix": 2.7, "dgmix": 2.7}
# The same with fused BatchNormalization: tighter.
FUSED_FULL_STEP_LIMITS = {"sam": 2.05, "gmix": 2.05, "bgmix": 2.5, "dgmix": 2.5}
# An efficient schedule's amortized step cost over ERM's, in CPU time.
SCHEDULE_STEP_LIMITS = {"gmix:k5": 1.25, "dgmix:k5": 1.35}

# In the order each row's targets are listed.
TARGETS = (
    *(
        Target(f"issue 6: {method} <= {limit}x erm", method, "x_erm", limit)
        for method, limit in FULL_STEP_LIMITS.items()
    ),
    *(
        Target(f"issue 9: {method} <= {limit}x erm (fused)", method, "x_erm", limit, True)
        for method, limit in FUSED_FULL_STEP_LIMITS.items()
    ),
    # Our SAM step against SAM as most Keras code writes it, and against tf-keras.
    Target("issue 6: sam <= naive sam", "sam", "x_naive_sam", 1.0),
    Target("issue 9: sam (fused) <= tf-keras SAM", "sam", "x_tf_keras_sam", 1.0, True),
    Target("issue 9: erm (fused) <= tf-keras fit", "erm", "x_tf_keras_fit", 1.0, True),
    *(
        Target(
            f"issue 19: {method} <= {limit}x erm (CPU time)", method, "x_erm", limit, on_cpu=True
        )
        for method, limit in SCHEDULE_STEP_LIMITS.items()
    ),
)


def verdict(target, ratio, ratio_cpu):
    """The check's verdict: yes, no, or unclear when a wall-clock target's
    CPU-time ratio falls on the other side of the limit."""
    holds = (ratio_cpu if target.on_cpu else ratio) <= target.limit
    if target.on_cpu or ratio_cpu is None or (ratio_cpu <= target.limit) == holds:
        return "yes" if holds else "no"
    return "unclear"


def check_target(target, row):
    """The target's check of `row` (a JSON row), or None when the row lacks its ratio."""
    ratio, ratio_cpu = row.get(target.ratio), row.get(target.ratio + "_cpu")
    decisive = ratio_cpu if target.on_cpu else ratio
    if decisive is None:
        return None
    rounds = row.get(target.ratio + "_rounds")
    check = {
        "target": target.label,
        "model": row["model"],
        "batchnorm": row["batchnorm"],
        "jit_compile": row["jit_compile"],
        "method": row["method"],
        "ratio": ratio,
        "ratio_cpu": ratio_cpu,
        "round_range": [min(rounds), max(rounds)] if rounds else None,
        "limit": target.limit,
        "holds": decisive <= target.limit,
        "verdict": verdict(target, ratio, ratio_cpu),
    }
    if target.on_cpu:
        check["on_cpu"] = True
    return check


def check_targets(rows):
    """Each target that was measured, with its verdict, row by row."""
    checks = []
    for row in rows:
        if row["batchnorm"] == PEER_BN:
            continue
        for target in TARGETS:
            if target.method != row["method"]:
                continue
            if target.fused_only and row["batchnorm"] != "fused":
                continue
            check = check_target(target, row)
            if check is not None:
                checks.append(check)
    return checks


VERDICTS = {"yes": "yes", "no": "**no**", "unclear": "unclear"}


def fmt(value, spec=".2f", none="–"):
    return none if value is None else format(value, spec)


def fmt_ratio(row, key):
    """'wall (cpu)' for a ratio column."""
    if not row or row.get(key) is None:
        return "–"
    cpu = row.get(key + "_cpu")
    return f"{row[key]:.2f}" + ("" if cpu is None else f" ({cpu:.2f})")


def tables(rows, checks):
    """Markdown tables: one per model and jit setting (with the peers), the targets."""
    lines = []
    groups = []
    for row in rows:
        group = (row["model"], row["jit_compile"])
        if group not in groups:
            groups.append(group)
    index = {(r["model"], r["batchnorm"], r["jit_compile"], r["method"]): r for r in rows}
    for model, jit in groups:
        lines.append(f"### {model}, jit_compile={'on' if jit else 'off'}")
        lines.append("")
        lines.append(
            "| method | stock ms/step | stock x erm | fused ms/step | fused x erm "
            "| fused / stock | stock peak MB | fused peak MB |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        methods = []
        for row in rows:
            if (row["model"], row["jit_compile"]) == (model, jit) and row["batchnorm"] != PEER_BN:
                if row["method"] not in methods:
                    methods.append(row["method"])
        for method in methods:
            stock = index.get((model, "stock", jit, method), {})
            fused = index.get((model, "fused", jit, method), {})
            lines.append(
                f"| {method} | {fmt(stock.get('median_ms'), '.0f')} | {fmt_ratio(stock, 'x_erm')} "
                f"| {fmt(fused.get('median_ms'), '.0f')} | {fmt_ratio(fused, 'x_erm')} "
                f"| {fmt_ratio(fused, 'fused_x_stock')} | {fmt(stock.get('step_peak_mb'), '.0f')} "
                f"| {fmt(fused.get('step_peak_mb'), '.0f')} |"
            )
        peers = [
            r
            for r in rows
            if (r["model"], r["jit_compile"]) == (model, jit) and r["batchnorm"] == PEER_BN
        ]
        if peers:
            lines.append("")
            lines.append(
                "| peer row | ms/step | x its own fit | peak MB | ours | ours ms/step "
                "| ours / peer |"
            )
            lines.append("|---|---:|---:|---:|---|---:|---:|")
            for peer in peers:
                ours_methods = [KERAS_FIT, "erm"] if peer["method"] == TFK_FIT else ["sam"]
                key = "x_tf_keras_fit" if peer["method"] == TFK_FIT else "x_tf_keras_sam"
                for ours_method in ours_methods:
                    for bn in ("stock", "fused"):
                        ours = index.get((model, bn, jit, ours_method))
                        if ours is None:
                            continue
                        lines.append(
                            f"| {peer['method']} | {fmt(peer['median_ms'], '.0f')} "
                            f"| {fmt_ratio(peer, 'x_own_fit')} | "
                            f"{fmt(peer.get('step_peak_mb'), '.0f')} "
                            f"| {ours_method} ({bn} BN) | {fmt(ours['median_ms'], '.0f')} "
                            f"| {fmt_ratio(ours, key)} |"
                        )
        naive = [index.get((model, bn, jit, "sam")) for bn in ("stock", "fused")]
        naive = [r for r in naive if r and r.get("x_naive_sam") is not None]
        if naive:
            lines.append("")
            lines.append(
                "Our sam over the naive SAM (assign_add/assign_sub): "
                + ", ".join(f"{r['batchnorm']} BN {fmt_ratio(r, 'x_naive_sam')}" for r in naive)
                + "."
            )
        lines.append("")
    if checks:
        lines.append("### Targets")
        lines.append("")
        lines.append(
            "Median wall-clock ratio, the CPU-time ratio in parentheses, and the lowest and "
            "highest per-round wall-clock ratio. Holds: yes or no where the wall-clock and the "
            "CPU-time ratios agree, unclear where they fall on both sides of the limit"
            + (
                "; for targets marked (CPU time), the CPU-time ratio decides."
                if any(c.get("on_cpu") for c in checks)
                else "."
            )
        )
        lines.append("")
        lines.append("| target | model | BN | jit | measured (cpu) | rounds | holds |")
        lines.append("|---|---|---|---|---:|---:|---|")
        for c in checks:
            cpu = "" if c.get("ratio_cpu") is None else f" ({c['ratio_cpu']:.2f})"
            spread = "–" if not c.get("round_range") else "{:.2f}–{:.2f}".format(*c["round_range"])
            lines.append(
                f"| {c['target']} | {c['model']} | {c['batchnorm']} | "
                f"{'on' if c['jit_compile'] else 'off'} "
                f"| {c['ratio']:.2f}{cpu} | {spread} | {VERDICTS[c['verdict']]} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_header(meta):
    allocator = (
        "BFC CPU allocator (`TF_CPU_ALLOCATOR_USE_BFC=true`)"
        if meta["allocator"] == "bfc"
        else "default CPU allocator (no per-row peak memory)"
    )
    if "backend" in meta:  # a run on another backend than TensorFlow
        allocator = f"Keras backend {meta['backend']} (JAX {meta['jax']}), no peak memory"
    return f"""- Run {meta["run"]}: `{meta["command"]}`
  - {meta["date"]} (git {meta["git_commit"]}); {meta["total_s"] / 60:.1f} min; \
steps x rounds: {meta["steps_rounds"]}
  - {meta["cpu_count"]} CPU cores, {meta["cpu_model"]}; Python {meta["python"]}, TensorFlow
    {meta["tensorflow"]}, Keras {meta["keras"]}, tf-keras {meta["tf_keras"]}; {allocator}
  - load average (1, 5, 15 min) before {meta["load_before"]}, after {meta["load_after"]};
    process RSS high-water mark {meta["max_rss_mb"]:.0f} MB
"""


def write_results(path, runs, rows):
    """PATH.json (the runs, the rows and the targets' checks) and PATH.md."""
    checks = check_targets(rows)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".json", "w") as f:
        json.dump({"runs": runs, "rows": rows, "targets": checks}, f, indent=1)
        f.write("\n")
    warmup = runs[-1]["warmup"]
    header = f"""# Step time: G-Mix methods vs ERM, naive SAM and tf-keras

Generated by `benchmarks/step_time.py`. How to read it, and the profiling of
the targets that are missed: `benchmarks/README.md`.

{"".join(run_header(meta) for meta in runs)}
Setup: batch {runs[-1]["batch_size"]} of random 32x32x3 images, 10 classes, SGD (momentum
0.9), sparse categorical cross-entropy, rho {runs[-1]["rho"]}, alpha 1.0, gamma 0.5.
Each configuration is built and traced (and compiled) by one `fit` step,
which runs a step too; {warmup} more untimed step(s) follow; then it is timed
in rounds: every round runs K steps of every configuration of a model, in a
shuffled order. Other engineers' test runs
share the 2 cores (see the load averages), so absolute times are inflated
and noisy; the ratios are paired within rounds, which cancels most of it.

- ms/step: median wall-clock time of all timed steps of the train function.
- x erm: median over rounds of (round median / erm's round median), same model,
  BatchNorm and jit setting; in parentheses the same ratio of process CPU time
  (user + system, all threads), which other processes' load disturbs much less.
  "fused / stock" and "ours / peer" are paired the same way.
- peak MB: peak of `tf.config.experimental.get_memory_info('CPU:0')` during the
  configuration's steps minus the bytes in use before them (activations,
  gradients, temporaries; not the resident weights and optimizer state), max
  over rounds. The default CPU allocator keeps no statistics, hence the BFC one.

"""
    with open(path + ".md", "w") as f:
        f.write(header + tables(rows, checks))


def load_previous(path):
    try:
        with open(path + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"runs": [], "rows": []}


# -- the backends side by side (step_time.py --backends) ----------------------


def backend_rows(backends, processes):
    """One row per backend, model, BatchNorm and method, from the rows of
    the processes (`{"round", "backend", "rows"}`; each backend once per round).

    Within a backend, a method's step over ERM's is paired by the rounds of
    each process (pooled over its processes): `x_erm`, `x_erm_cpu`,
    `x_erm_rounds`, as in a single run. Between backends, processes are
    paired by round: per round, this backend's median step over the first
    backend's (`x_<first backend>`, with `_cpu` and `_rounds`).
    """
    reference = backends[0]
    by_process = {}  # (round, backend) -> {(model, bn, method): row}
    order = []
    for process in processes:
        rows = {}
        for row in process["rows"]:
            key = (row["model"], row["batchnorm"], row["method"])
            rows[key] = row
            if key not in order:
                order.append(key)
        by_process[process["round"], process["backend"]] = rows
    rounds = sorted({r for r, _ in by_process})
    combined = []
    for backend in backends:
        for key in order:
            model, bn, method = key
            mine = [by_process[r, backend].get(key) for r in rounds if (r, backend) in by_process]
            mine = [row for row in mine if row is not None]
            if not mine:
                continue
            row = {
                "backend": backend,
                "model": model,
                "batchnorm": bn,
                "jit_compile": mine[0]["jit_compile"],
                "method": method,
                "processes": len(mine),
                "median_ms": median([v for m in mine for v in m["round_medians_ms"]]),
                "cpu_median_ms": median([v for m in mine for v in m["cpu_round_medians_ms"]]),
            }
            for cpu in (False, True):
                field = "cpu_round_medians_ms" if cpu else "round_medians_ms"
                ratios = []
                for r in rounds:
                    this = by_process.get((r, backend), {})
                    if key in this and (model, bn, "erm") in this:
                        erm = this[model, bn, "erm"]
                        ratios += [a / b for a, b in zip(this[key][field], erm[field])]
                name = "x_erm_cpu" if cpu else "x_erm"
                row[name] = median(ratios)
                if not cpu:
                    row["x_erm_rounds"] = [round(v, 3) for v in ratios]
            name = f"x_{reference}"
            for cpu in (False, True):
                field = "cpu_median_ms" if cpu else "median_ms"
                ratios = [
                    by_process[r, backend][key][field] / by_process[r, reference][key][field]
                    for r in rounds
                    if key in by_process.get((r, backend), {})
                    and key in by_process.get((r, reference), {})
                ]
                row[name + ("_cpu" if cpu else "")] = median(ratios)
                if not cpu:
                    row[name + "_rounds"] = [round(v, 3) for v in ratios]
            combined.append(row)
    return combined


def backend_results(meta, processes):
    """The JSON of `step_time.py --backends`: the run, its processes (their
    runs and rows, every round's values) and the combined rows."""
    return {
        "run": meta,
        "processes": processes,
        "rows": backend_rows(meta["backends"], processes),
    }


def backend_tables(results):
    """Markdown: per model and BatchNorm, each backend's ms/step and x ERM,
    and each backend's step over the first backend's."""
    backends = results["run"]["backends"]
    reference, others = backends[0], backends[1:]
    rows = results["rows"]
    index = {(r["backend"], r["model"], r["batchnorm"], r["method"]): r for r in rows}
    lines = []
    groups = []
    for row in rows:
        if (row["model"], row["batchnorm"]) not in groups:
            groups.append((row["model"], row["batchnorm"]))
    for model, bn in groups:
        jits = []
        for backend in backends:
            row = next((r for r in rows if (r["backend"], r["model"]) == (backend, model)), None)
            if row is not None:
                jits.append(f"{backend} jit {'on' if row['jit_compile'] else 'off'}")
        lines.append(f"### {model}, {bn} BatchNorm ({', '.join(jits)})")
        lines.append("")
        header = "| method |"
        rule = "|---|"
        for backend in backends:
            header += f" {backend} ms/step (CPU) | {backend} x erm |"
            rule += "---:|---:|"
        for backend in others:
            header += f" {backend} / {reference} |"
            rule += "---:|"
        lines += [header, rule]
        methods = []
        for row in rows:
            if (row["model"], row["batchnorm"]) == (model, bn) and row["method"] not in methods:
                methods.append(row["method"])
        for method in methods:
            line = f"| {method} |"
            for backend in backends:
                row = index.get((backend, model, bn, method), {})
                line += (
                    f" {fmt(row.get('median_ms'), '.0f')} ({fmt(row.get('cpu_median_ms'), '.0f')})"
                    f" | {fmt_ratio(row, 'x_erm')} |"
                )
            for backend in others:
                line += f" {fmt_ratio(index.get((backend, model, bn, method)), 'x_' + reference)} |"
            lines.append(line)
        lines.append("")
        for backend in others:
            erm = index.get((backend, model, bn, "erm"))
            if erm and erm.get("x_" + reference + "_rounds"):
                per_round = ", ".join(f"{v:.2f}" for v in erm["x_" + reference + "_rounds"])
                lines.append(
                    f"ERM on {backend} over ERM on {reference}, round by round (wall clock): "
                    f"{per_round}."
                )
                lines.append("")
    return "\n".join(lines)


def process_line(process):
    meta = process["runs"][-1]
    versions = f"Keras {meta['keras']}, TensorFlow {meta['tensorflow']}" + (
        f", JAX {meta['jax']}" if meta.get("jax") else ""
    )
    return (
        f"  - round {process['round']}, {process['backend']}: {meta['date']}, "
        f"{meta['total_s'] / 60:.1f} min, steps x rounds {meta['steps_rounds']}, "
        f"load {meta['load_before']} -> {meta['load_after']}; {versions}\n"
    )


def write_backend_results(path, results):
    """PATH.json and PATH.md of `step_time.py --backends`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".json", "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    meta = results["run"]
    backends = meta["backends"]
    first = results["processes"][0]["runs"][-1]
    header = f"""# Step time on Keras' backends: {" and ".join(backends)}

Generated by `benchmarks/step_time.py --backends`; how to read it:
`benchmarks/README.md` (Step time, Backends).

- `{meta["command"]}`
  - {meta["date"]} (git {meta["git_commit"]}); {meta["total_s"] / 60:.1f} min
  - {meta["cpu_count"]} CPU cores, {meta["cpu_model"]}; Python {meta["python"]}
  - load average (1, 5, 15 min) before {meta["load_before"]}, after {meta["load_after"]}
  - {meta["process_rounds"]} rounds of one process per backend (the first backend
    alternating), in this order:
{"".join(process_line(p) for p in results["processes"])}
Setup: batch {first["batch_size"]} of random 32x32x3 images, 10 classes, SGD (momentum
0.9), sparse categorical cross-entropy, rho {first["rho"]}, alpha 1.0, gamma 0.5;
`GMixModel(method=...)` on the same ResNet; each backend at `fit`'s default on a
CPU (TensorFlow: jit off; JAX: jit on). The fused BatchNormalization of
`keras_gmix.layers` runs TensorFlow's fused kernel on TensorFlow and Keras' own
layer on JAX. In each process every configuration is built, traced and compiled by
one `fit` step, {first["warmup"]} more untimed step(s) follow, then it is timed in
rounds of K steps of every configuration, in a shuffled order.

- ms/step: median of the rounds' median step time, over the backend's processes;
  CPU: the same for the process' CPU time (all threads).
- x erm: median over the rounds of every process of the backend of (the round's
  median step / ERM's in that round), wall clock; the CPU-time ratio in parentheses.
- {" / ".join(backends[1:])} / {backends[0]}: median over the rounds of processes of
  (this backend's median step / {backends[0]}'s median step of the same method in the
  same round); CPU time in parentheses. Where wall clock and CPU time disagree,
  trust the CPU time: wall clock on these machines jumps between discrete levels.

"""
    with open(path + ".md", "w") as f:
        f.write(header + backend_tables(results))
