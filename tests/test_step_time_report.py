"""benchmarks/step_time_report.py: paired ratios, targets and the committed reports."""

import json
import os
import shutil
import sys
from types import SimpleNamespace

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)
import step_time_report as report  # noqa: E402


def timed(method, wall, cpu, bn="fused", perturb_every=1, full=None):
    """A timed configuration as step_time.py leaves it: per round, the step times."""
    return SimpleNamespace(
        model="resnet8",
        bn=bn,
        jit=False,
        method=method,
        key=("resnet8", bn, False, method),
        perturb_every=perturb_every,
        round_times=wall,
        round_cpu_times=cpu,
        round_full=full or [[] for _ in wall],
        first_call_s=1.0,
        step_peak=2**20,
        last_loss=2.3,
    )


def test_a_schedule_rounds_value_is_the_amortized_step():
    # k = 2: round 1 full steps 4, 6 (median 5), cheap 1, 3 (median 2):
    # (5 + 1 * 2) / 2 = 3.5; round 2 full 8, cheap 2: (8 + 2) / 2 = 5.
    config = timed(
        "gmix:k2",
        wall=[[4.0, 1.0, 6.0, 3.0], [8.0, 2.0]],
        cpu=[[1.0] * 4, [1.0] * 2],
        perturb_every=2,
        full=[[True, False, True, False], [True, False]],
    )
    assert report.round_values(config) == [3.5, 5.0]
    config.round_full = [[True] * 4, [True, False]]
    with pytest.raises(ValueError, match="at least 2 steps per round"):
        report.round_values(config)


def test_summarize_pairs_ratios_within_rounds():
    erm = timed("erm", wall=[[1.0, 3.0], [4.0]], cpu=[[1.0], [2.0]])
    sam = timed("sam", wall=[[4.0, 4.0], [6.0]], cpu=[[3.0], [3.0]])
    rows = report.summarize([erm, sam], run=7)
    sam_row = rows[1]
    # Round medians: erm 2, 4; sam 4, 6; ratios 2.0 and 1.5, median 1.75.
    assert sam_row["x_erm"] == pytest.approx(1.75)
    assert sam_row["x_erm_rounds"] == [2.0, 1.5]
    # CPU: 3 / 1 and 3 / 2, median 2.25.
    assert sam_row["x_erm_cpu"] == pytest.approx(2.25)
    assert sam_row["median_ms"] == pytest.approx(5000.0)  # median of 4 and 6 s
    assert sam_row["steps_timed"] == 3 and sam_row["run"] == 7
    # Not measured: no naive-SAM, tf-keras or stock row; fused / stock stays as None.
    assert "x_naive_sam" not in sam_row and "x_tf_keras_sam" not in sam_row
    assert sam_row["fused_x_stock"] is None
    assert rows[0]["x_erm"] == 1.0 and "x_erm_cpu" not in rows[0]


def row(method, x_erm, x_erm_cpu, bn="fused"):
    return {
        "model": "resnet8",
        "batchnorm": bn,
        "jit_compile": False,
        "method": method,
        "x_erm": x_erm,
        "x_erm_cpu": x_erm_cpu,
        "x_erm_rounds": [x_erm - 0.1, x_erm + 0.2],
    }


def test_targets_verdicts_by_hand():
    checks = report.check_targets(
        [
            row("sam", 2.0, 2.0),  # <= 2.1 and <= 2.05: yes, yes
            row("bgmix", 2.6, 2.75),  # 2.7: wall yes, CPU no: unclear; 2.5: no
            row("gmix", 2.08, 2.0, bn="stock"),  # 2.1 only (fused limits skip stock): yes
            row("dgmix:k5", 1.40, 1.30),  # CPU time decides 1.35: yes
        ]
    )
    assert [(c["target"], c["verdict"]) for c in checks] == [
        ("issue 6: sam <= 2.1x erm", "yes"),
        ("issue 9: sam <= 2.05x erm (fused)", "yes"),
        ("issue 6: bgmix <= 2.7x erm", "unclear"),
        ("issue 9: bgmix <= 2.5x erm (fused)", "no"),
        ("issue 6: gmix <= 2.1x erm", "yes"),
        ("issue 19: dgmix:k5 <= 1.35x erm (CPU time)", "yes"),
    ]
    cpu_check = checks[-1]
    assert cpu_check["ratio"] == 1.40 and cpu_check["ratio_cpu"] == 1.30
    assert cpu_check["holds"] and cpu_check["on_cpu"]
    assert checks[2]["round_range"] == [pytest.approx(2.5), pytest.approx(2.8)]
    assert "on_cpu" not in checks[0]


@pytest.mark.parametrize("name", ["step_time", "step_time_reuse", "step_time_schedules"])
def test_the_committed_reports_rebuild_unchanged(tmp_path, name):
    committed = os.path.join(BENCHMARKS, "results", name)
    shutil.copy(committed + ".json", tmp_path / f"{name}.json")
    results = report.load_previous(str(tmp_path / name))
    report.write_results(str(tmp_path / name), results["runs"], results["rows"])
    for suffix in (".md", ".json"):
        with open(committed + suffix, encoding="utf-8") as f:
            assert (tmp_path / f"{name}{suffix}").read_text(encoding="utf-8") == f.read(), suffix
    # Only the reports with a CPU-time target explain how it is decided.
    with open(committed + ".json", encoding="utf-8") as f:
        has_cpu_target = any(c.get("on_cpu") for c in json.load(f)["targets"])
    with open(committed + ".md", encoding="utf-8") as f:
        assert ("the CPU-time ratio decides" in f.read()) == has_cpu_target


def process(round_, backend, rows):
    """A process of `step_time.py --backends`: its rows, as summarize writes them."""
    return {"round": round_, "backend": backend, "runs": [], "rows": rows}


def process_row(method, walls, cpus, jit=False):
    """A summarized row: its round medians (ms) and the medians over them."""
    return {
        "model": "resnet20",
        "batchnorm": "fused",
        "jit_compile": jit,
        "method": method,
        "round_medians_ms": walls,
        "cpu_round_medians_ms": cpus,
        "median_ms": report.median(walls),
        "cpu_median_ms": report.median(cpus),
    }


BACKEND_PROCESSES = [
    # Round 1: TensorFlow first; round 2: JAX first (the order does not matter here).
    process(
        1,
        "tensorflow",
        [process_row("erm", [100, 200], [100, 100]), process_row("sam", [200, 600], [200, 300])],
    ),
    process(
        1,
        "jax",
        [
            process_row("erm", [1000, 1000], [500, 500], jit=True),
            process_row("sam", [3000, 2000], [1000, 1500], jit=True),
        ],
    ),
    process(
        2,
        "jax",
        [
            process_row("erm", [800, 800], [400, 400], jit=True),
            process_row("sam", [1600, 1600], [800, 800], jit=True),
        ],
    ),
    process(
        2,
        "tensorflow",
        [process_row("erm", [100, 100], [100, 100]), process_row("sam", [300, 300], [200, 200])],
    ),
]


def test_backend_rows_pair_methods_within_processes_and_backends_by_round():
    rows = report.backend_rows(["tensorflow", "jax"], BACKEND_PROCESSES)
    index = {(r["backend"], r["method"]): r for r in rows}
    assert [(r["backend"], r["method"]) for r in rows] == [
        ("tensorflow", "erm"),
        ("tensorflow", "sam"),
        ("jax", "erm"),
        ("jax", "sam"),
    ]
    tf_sam, jax_sam, jax_erm = index["tensorflow", "sam"], index["jax", "sam"], index["jax", "erm"]
    # Over ERM, round by round within each process, pooled: 200/100, 600/200,
    # 300/100, 300/100 -> 2, 3, 3, 3, median 3; CPU 2, 3, 2, 2 -> 2.
    assert tf_sam["x_erm_rounds"] == [2.0, 3.0, 3.0, 3.0]
    assert tf_sam["x_erm"] == 3.0 and tf_sam["x_erm_cpu"] == 2.0
    # JAX sam: 3, 2, 2, 2 -> 2; CPU 2, 3, 2, 2 -> 2.
    assert jax_sam["x_erm"] == 2.0 and jax_sam["x_erm_cpu"] == 2.0
    # JAX over TensorFlow, the same round's processes: ERM 1000/150 and 800/100,
    # median 7.33; CPU 500/100 and 400/100 -> 4.5.
    assert jax_erm["x_tensorflow_rounds"] == [pytest.approx(6.667), 8.0]
    assert jax_erm["x_tensorflow"] == pytest.approx((1000 / 150 + 8) / 2)
    assert jax_erm["x_tensorflow_cpu"] == 4.5
    # sam: 2500/400 and 1600/300; CPU 1250/250 and 800/200.
    assert jax_sam["x_tensorflow"] == pytest.approx((2500 / 400 + 1600 / 300) / 2)
    assert jax_sam["x_tensorflow_cpu"] == pytest.approx(4.5)
    # ms/step: the median of all the backend's round medians.
    assert jax_erm["median_ms"] == 900 and jax_erm["cpu_median_ms"] == 450
    assert jax_erm["jit_compile"] and jax_erm["processes"] == 2
    assert index["tensorflow", "erm"]["x_tensorflow"] == 1.0


def test_backend_report_writes_the_table(tmp_path):
    meta = {"backends": ["tensorflow", "jax"], "process_rounds": 2}
    results = report.backend_results(meta, BACKEND_PROCESSES)
    table = report.backend_tables(results)
    assert (
        "| method | tensorflow ms/step (CPU) | tensorflow x erm | jax ms/step (CPU) "
        "| jax x erm | jax / tensorflow |"
    ) in table
    assert "| erm | 100 (100) | 1.00 (1.00) | 900 (450) | 1.00 (1.00) | 7.33 (4.50) |" in table
    assert "| sam | 300 (200) | 3.00 (2.00) | 1800 (900) | 2.00 (2.00) | 5.79 (4.50) |" in table
    assert "tensorflow jit off, jax jit on" in table
    assert "round by round (wall clock): 6.67, 8.00." in table

    run = {
        "date": "2026-12-04T06:00+00:00",
        "total_s": 60.0,
        "steps_rounds": "resnet20 2x2",
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [2.0, 2.0, 2.0],
        "keras": "3.15.1",
        "tensorflow": "2.21.0",
        "batch_size": 128,
        "rho": 0.05,
        "warmup": 1,
    }
    processes = [
        dict(p, runs=[dict(run, jax="0.10.2") if p["backend"] == "jax" else run])
        for p in BACKEND_PROCESSES
    ]
    meta.update(
        command="python benchmarks/step_time.py --backends tensorflow jax",
        date="2026-12-04T06:10+00:00",
        git_commit="abc1234",
        cpu_count=2,
        cpu_model="a CPU",
        python="3.11.7",
        load_before=[1.0, 1.0, 1.0],
        load_after=[2.0, 2.0, 2.0],
        total_s=300.0,
    )
    path = str(tmp_path / "step_time_backends")
    report.write_backend_results(path, report.backend_results(meta, processes))
    with open(path + ".json", encoding="utf-8") as f:
        assert json.load(f)["rows"] == results["rows"]
    text = (tmp_path / "step_time_backends.md").read_text(encoding="utf-8")
    assert "`python benchmarks/step_time.py --backends tensorflow jax`" in text
    assert "round 2, jax: 2026-12-04T06:00+00:00, 1.0 min" in text
    assert "JAX 0.10.2" in text and table in text
