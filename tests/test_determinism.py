"""Two runs with the same seed give bit-identical weights on CPU under op determinism."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def weights_hash(seed):
    completed = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed", "determinism_run.py"), str(seed)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # two training processes
def test_same_seed_same_weights_bit_for_bit():
    first, second = weights_hash(0), weights_hash(0)
    assert first == second
    assert weights_hash(1) != first  # the hash does depend on the seed
