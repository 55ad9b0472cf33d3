"""The plan of benchmarks/generalization.py: methods, data sets, budgets, where
each run's file is, and the (alpha, rho) the sweep chose.

Shared by the runs (`generalization.py`) and the report
(`generalization_report.py`); it imports neither.
"""

import json
import os


def __getattr__(name):
    """`METHODS` is keras_gmix.gradients.METHODS, imported on first use:
    importing keras_gmix loads TensorFlow, which `import generalization_plan`
    (by the report, the tests) need not pay for.
    """
    if name == "METHODS":
        from keras_gmix.gradients import METHODS

        return METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The methods the benchmark asks about, and the two baselines they must beat.
GMIX_FAMILY = ("gmix", "bgmix", "dgmix")
BASELINES = {"mixup": "Mixup", "sam": "SAM"}
# Efficient schedules (SPEC.md section 4b) of the G-Mix family, named
# METHOD-kK (perturb_every=K), METHOD-kK-rA (and reuse_scale=A), METHOD-pP
# (perturb_probability=P) or METHOD-fF (perturb_from=F: a step, or a
# fraction of the run's steps; combines with kK); they train with their full
# method's (rho, alpha).
SCHEDULE_VARIANTS = tuple(
    f"{method}-{suffix}"
    for method in ("gmix", "dgmix")
    for suffix in ("k5", "k10", "k5-r0.1", "k5-r0.3", "p0.2", "f0.875", "f0.875-k5")
)
# The letter of each schedule setting in a variant's name, and its type.
SCHEDULE_PARTS = {
    "k": ("perturb_every", int),
    "r": ("reuse_scale", float),
    "p": ("perturb_probability", float),
    "f": ("perturb_from", float),
}
# Parts that are a whole word: options of the step that are not a schedule.
# "lean": bgmix/dgmix without pass 1's tape held through pass 2 (SPEC.md
# section 4b, "Memory").
FLAG_PARTS = {"lean": ("keep_first_pass", False)}
DATASETS = ("mnist1d", "cifar10_partial:2500", "cifar10_partial:5438")
# The budget of each data set: the same for every method. Why each budget
# is what it is: benchmarks/README.md, "Why these budgets" (the report quotes it).
BUDGETS = {
    "mnist1d": dict(
        epochs=200,
        batch_size=128,
        learning_rate=0.05,
        weight_decay=5e-4,
        eval_every=10,
        eigen_examples=1000,
        eigen_iters=20,
        sweep_epochs=100,  # shortened (the budget was 100 when it ran)
        sweep=dict(alpha=(0.2, 0.5, 1.0), rho=(0.02, 0.05, 0.1, 0.2)),
    ),
    "cifar10_partial": dict(
        epochs=200,
        batch_size=128,
        learning_rate=0.1,
        weight_decay=5e-4,
        eval_every=10,
        # Runs of these subsets train on the epoch-keyed stream and keep a
        # checkpoint every epoch, so a killed run resumes where it stopped.
        # Not the 2,500 set: its runs were made with the plain seeded
        # shuffle, and a re-run must see what they saw.
        resumable_subsets=("5438",),
        eigen_examples=512,
        eigen_iters=10,
        sweep_epochs=50,  # shortened: see README
        sweep=dict(alpha=(0.2, 1.0), rho=(0.05, 0.1)),
        model="resnet8",
    ),
}


def parse_variant(name):
    """`"dgmix-k5-r0.3"` -> ("dgmix", {"perturb_every": 5, "reuse_scale": 0.3});
    a plain method -> (name, {}).

    `"gmix-f0.875"` -> ("gmix", {"perturb_from": 0.875}); `"dgmix-lean"` ->
    ("dgmix", {"keep_first_pass": False}).
    """
    from keras_gmix.gradients import METHODS

    method, *parts = name.split("-")
    if method not in METHODS:
        raise ValueError(
            f"Unknown method {name!r}: one of {METHODS}, or a schedule like 'gmix-k5'."
        )
    schedule = {}
    for part in parts:
        if part in FLAG_PARTS:
            key, value = FLAG_PARTS[part]
            schedule[key] = value
            continue
        if not part or part[0] not in SCHEDULE_PARTS:
            raise ValueError(f"Unknown schedule part {part!r} in {name!r}: kK, rA, pP, fF or lean.")
        key, kind = SCHEDULE_PARTS[part[0]]
        try:
            schedule[key] = kind(part[1:])
        except ValueError:
            raise ValueError(
                f"Schedule part {part!r} in {name!r} needs a number after {part[0]!r}."
            ) from None
    return method, schedule


def variant_suffix(schedule):
    """The name parts of a parsed schedule, in order: the inverse of `parse_variant`."""
    letters = {key: letter for letter, (key, _) in SCHEDULE_PARTS.items()}
    words = {setting: word for word, setting in FLAG_PARTS.items()}
    return [
        words[(key, value)] if (key, value) in words else f"{letters[key]}{value:g}"
        for key, value in (schedule or {}).items()
    ]


def budget_epochs(name, subset):
    """The budget's epochs for one training subset (the same for every method)."""
    return BUDGETS[name]["epochs"]


def is_resumable(name, subset):
    """Whether runs of this training subset checkpoint every epoch (see BUDGETS)."""
    return subset in BUDGETS[name].get("resumable_subsets", ())


def parse_dataset(key):
    name, _, subset = key.partition(":")
    if name not in BUDGETS:
        raise ValueError(f"Unknown data set {key!r}. Expected one of {DATASETS}.")
    if name == "mnist1d":
        subset = subset or "4000"
        if subset != "4000":
            raise ValueError("mnist1d has one training set: 'mnist1d' (4000 examples).")
    elif subset not in ("2500", "5438"):
        raise ValueError(f"cifar10_partial needs a subset ':2500' or ':5438'. Received {key!r}.")
    return name, subset


def write_json(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Flushed, then renamed: a killed process or a power cut never leaves
    # half a file (a run costs up to an hour).
    from keras_gmix.records import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1))


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def run_dir(out, name, subset):
    return os.path.join(out, "generalization_runs", name, subset)


def fmt(value):
    return f"{value:g}"


def sweep_path(out, name, subset, method, rho, alpha, epochs):
    return os.path.join(
        run_dir(out, name, subset),
        "sweep",
        f"{method}_rho{fmt(rho)}_alpha{fmt(alpha)}_e{epochs}_seed0.json",
    )


def sweep_dataset(name):
    """The data set and subset whose validation split the sweep of `name` uses."""
    return (name, "4000") if name == "mnist1d" else (name, "2500")


def sweep_results(out, name):
    """{(method, rho, alpha): val_accuracy} of the finished sweep runs."""
    sname, ssubset = sweep_dataset(name)
    folder = os.path.join(run_dir(out, sname, ssubset), "sweep")
    found = {}
    if os.path.isdir(folder):
        for fname in sorted(os.listdir(folder)):
            if fname.endswith(".json"):
                r = read_json(os.path.join(folder, fname))
                found[(r["method"], r["config"]["rho"], r["config"]["alpha"])] = r["val_accuracy"]
    return found


def best(found, method, values, key):
    """The value of `values` with the best validation accuracy (ties: the smaller)."""
    scored = [(found[key(v)], -v, v) for v in values if key(v) in found]
    if len(scored) < len(values):
        return None
    return max(scored)[2]


def chosen_hparams(out, name):
    """(alpha, rho_sam, rho_gmix) from the sweep files; None where a part is missing."""
    grid = BUDGETS[name]["sweep"]
    found = sweep_results(out, name)
    alpha = best(found, "mixup", grid["alpha"], lambda a: ("mixup", 0.0, a))
    rho_sam = best(found, "sam", grid["rho"], lambda r: ("sam", r, 1.0))
    rho_gmix = None
    if alpha is not None:
        rho_gmix = best(found, "gmix", grid["rho"], lambda r: ("gmix", r, alpha))
    return alpha, rho_sam, rho_gmix


def method_hparams(method, alpha, rho_sam, rho_gmix):
    """(rho, alpha) a method trains with; alpha/rho it ignores are logged as 0 / 1."""
    if method == "erm":
        return 0.0, 1.0
    if method == "mixup":
        return 0.0, alpha
    if method == "sam":
        return rho_sam, 1.0
    return rho_gmix, alpha


def sweep_plan(out, name):
    """The sweep runs of `name` that can run now: (method, rho, alpha)."""
    grid = BUDGETS[name]["sweep"]
    plan = [("mixup", 0.0, a) for a in grid["alpha"]] + [("sam", r, 1.0) for r in grid["rho"]]
    plan.append(("erm", 0.0, 1.0))  # the reference the swept values should beat
    alpha, _, _ = chosen_hparams(out, name)
    if alpha is not None:  # G-Mix's rho at Mixup's best alpha
        plan += [("gmix", r, alpha) for r in grid["rho"]]
    return plan
