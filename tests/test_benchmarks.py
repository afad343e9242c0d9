"""Smoke tests of the benchmark scripts: they run and print their table (no timing asserted)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cpu_benchmark_prints_its_table(tmp_path):
    pytest.importorskip("torch")
    md = tmp_path / "bench.md"
    result = subprocess.run(
        [sys.executable, "benchmarks/cpu.py", "--cases", "tiny", "--rounds", "1",
         "--contenders", "backendnn,torch,floor",
         "--seconds", "0.05", "--pause", "0", "--no-memory", "--markdown", str(md)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()[-2:]
    assert "backendnn/torch" in header and "backendnn/floor" in header
    assert row.split()[0] == "tiny"
    assert "| tiny |" in md.read_text()


def _gpu_module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.pop(0)
    return gpu


def test_gpu_benchmark_shares_the_cpu_cases():
    gpu = _gpu_module()
    assert {"mlp", "tiny", "wide", "huge"} <= set(gpu.CASES) and "cnn" not in gpu.CASES
    assert gpu.CASES["mlp"]["sizes"] == gpu.CPU.CASES["mlp"]["sizes"]
    assert gpu.CASES["huge"]["sizes"] == [8192, 8192, 8192, 10]


def test_gpu_benchmark_table_from_given_times():
    """The GPU table's ratios and verdicts, from made-up step times (no GPU needed)."""
    gpu = _gpu_module()
    results = {"wide": {"backendnn": {"times": [2.0, 2.2, 2.1]}, "torch": {"times": [2.0] * 3},
                        "floor": {"times": [1.8] * 3}}}
    row, = gpu.summarise(results)
    assert row["backendnn"] == 2.1 and abs(row["backendnn/torch"] - 1.05) < 1e-12
    text = gpu.table([row], ["backendnn", "torch", "floor"])
    header, line = text.splitlines()
    assert "backendnn/torch" in header and line.split()[0] == "wide"
    assert "1.05 ok (<= 1.05)" in line
    markdown = gpu.table([row], ["backendnn", "torch", "floor"], markdown=True)
    assert markdown.splitlines()[1].startswith("|---|")
