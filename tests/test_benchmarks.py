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
        [sys.executable, "benchmarks/cpu.py", "--cases", "tiny", "--rounds", "2", "--processes", "2",
         "--contenders", "backendnn,torch,floor",
         "--seconds", "0.05", "--pause", "0", "--no-memory", "--markdown", str(md)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()[-2:]
    assert "backendnn/torch" in header and "backendnn/floor" in header
    assert row.split()[0] == "tiny"
    assert "| tiny |" in md.read_text()


def test_cpu_benchmark_baseline_runs_its_own_checkout(tmp_path):
    """`--baseline DIR` times the code in DIR: its worker imports backendnn from there,
    not this checkout's (a copy whose Linear is marked shows it)."""
    import shutil

    base = tmp_path / "base"
    for part in ("backendnn", "backends"):
        shutil.copytree(os.path.join(ROOT, part), base / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), base)  # a checkout: backends/ joins
    linear = base / "backendnn" / "layers" / "linear.py"
    linear.write_text(linear.read_text() + "\nBASELINE_MARK = True\n")
    code = ("import runpy, sys; cpu = runpy.run_path('benchmarks/cpu.py'); "
            f"cpu['_backendnn_model']([4, 3], {str(base)!r}); "
            "import backendnn.layers.linear as m, backendnn.backends.numpy as b; "
            "print(getattr(m, 'BASELINE_MARK', False), b.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    marked, backend_file = out.stdout.split()
    assert marked == "True" and backend_file.startswith(str(base))


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
