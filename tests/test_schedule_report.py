"""benchmarks/schedule_report.py: the accuracy/cost table and frontier, on hand-made run files."""

import json
import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
import schedule_report  # noqa: E402


def write_runs(folder, runs):
    os.makedirs(folder, exist_ok=True)
    for (name, seed), (accuracy, cpu) in runs.items():
        with open(os.path.join(folder, f"{name}_seed{seed}.json"), "w") as f:
            json.dump({"test_accuracy": accuracy, "cpu_seconds": cpu}, f)


def test_rows_cost_differences_and_frontier(tmp_path):
    folder = str(tmp_path / "generalization_runs" / "mnist1d" / "4000")
    write_runs(
        folder,
        {
            ("erm", 0): (0.90, 10.0),
            ("erm", 1): (0.92, 12.0),
            ("mixup", 0): (0.94, 11.5),
            ("mixup", 1): (0.95, 11.5),
            ("gmix", 0): (0.96, 22.0),
            ("gmix", 1): (0.95, 22.0),
            ("gmix-k5", 0): (0.955, 13.2),
            ("gmix-k5", 1): (0.955, 13.2),
        },
    )
    with open(os.path.join(folder, "gmix_seed9_e100.json"), "w") as f:  # a budget check: not a row
        json.dump({"test_accuracy": 0.1}, f)
    rows = {
        r["name"]: r
        for r in schedule_report.dataset_rows(schedule_report.read_runs(folder), (0, 1))
    }
    assert list(rows) == ["erm", "mixup", "gmix", "gmix-k5"]
    assert rows["gmix-k5"]["cost"] == pytest.approx(13.2 / 11.0)  # over ERM's mean CPU time
    assert rows["gmix-k5"]["mean"] == pytest.approx(95.5)
    # Paired by seed: (95.5 - 96) and (95.5 - 95) average to 0; against Mixup (94, 95) +1.0.
    assert rows["gmix-k5"]["vs_full"]["diff"] == pytest.approx(0.0)
    assert rows["gmix-k5"]["vs_mixup"]["diff"] == pytest.approx(1.0)
    assert rows["gmix"]["vs_full"] is None and rows["mixup"]["vs_mixup"] is None
    # gmix-k5 (95.5 at 1.2x) beats nothing cheaper; gmix (95.5 at 2x) is beaten by it only on cost.
    assert set(schedule_report.frontier(list(rows.values()))) == {"erm", "mixup", "gmix-k5", "gmix"}


def test_paired_t_test_matches_a_hand_computation():
    # d = (1, 2, 3) points: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.464, dof 2 -> p = 0.0742.
    result = schedule_report.paired({0: 0.50, 1: 0.50, 2: 0.50}, {0: 0.51, 1: 0.52, 2: 0.53})
    assert result["diff"] == pytest.approx(2.0) and result["p"] == pytest.approx(0.0742, abs=2e-4)


def test_the_figure_has_one_panel_per_data_set_with_runs_in_the_method_colours(tmp_path):
    from keras_gmix import plotting
    from tests.png_checks import has_color, png_size

    write_runs(
        str(tmp_path / "generalization_runs" / "mnist1d" / "4000"),
        {
            ("erm", 0): (0.90, 10.0),
            ("mixup", 0): (0.94, 11.0),
            ("gmix", 0): (0.96, 22.0),
            ("gmix-k5", 0): (0.95, 13.0),
        },
    )
    path = str(tmp_path / "schedules.png")
    schedule_report.plot(schedule_report.build(str(tmp_path)), path)
    # CIFAR-10 has no runs here: one panel, not two.
    assert png_size(path) == (round(6.5 * plotting.DPI), round(4.6 * plotting.DPI))
    for name in ("mixup", "gmix"):
        assert has_color(path, plotting.method_color(name)), name
    assert not has_color(path, plotting.method_color("sam"))
