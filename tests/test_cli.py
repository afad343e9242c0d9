"""`python -m backendnn backends`: one row per registered backend, with version,
device and whether it runs here (or why not)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import has_cuda
from test_registry import PLUGIN_ENTRY_POINTS, write_dummy_plugin

import backendnn
from backendnn import backends as B
from backendnn import cli

ROOT = Path(backendnn.__file__).resolve().parent.parent


def parse_table(text: str) -> dict[str, list[str]]:
    """{backend: [version, device, status]} from the table; the header comes first."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert re.split(r"\s{2,}", lines[0].strip()) == ["backend", "version", "device", "status"]
    rows = {}
    for line in lines[1:]:
        name, *cells = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        assert name not in rows, f"{name} listed twice"
        rows[name] = cells
    return rows


def test_python_m_backendnn_backends(tmp_path):
    write_dummy_plugin(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != B.ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "backendnn", "backends"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout)
    assert set(B.registered()) | set(PLUGIN_ENTRY_POINTS) == set(rows)
    assert rows["numpy"] == [np.__version__, "cpu", "available"]
    assert rows["dummy"] == ["0.1.0", "cpu", "available"]
    version, device, status = rows["dummy_missing"]
    assert (version, device) == ("-", "-") and status.startswith("unavailable: ")
    for name in B.available():
        assert rows[name][0] == B.get(name).version()
        assert rows[name][1:] == [str(B.get(name).device), "available"]
    if not has_cuda():
        assert rows["cupy"][2].startswith("unavailable: ") and "cuda12" in rows["cupy"][2]


def test_a_broken_backend_does_not_hide_the_others(monkeypatch, capsys):
    def broken():
        raise RuntimeError("boom")

    B.registered()
    monkeypatch.setitem(B._loaders, "broken", broken)
    assert cli.main(["backends"]) == 0
    rows = parse_table(capsys.readouterr().out)
    assert rows["broken"] == ["-", "-", "failed to load: RuntimeError: boom"]
    assert rows["numpy"][2] == "available"


def test_no_verb_shows_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "backends" in capsys.readouterr().err
