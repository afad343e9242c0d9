"""`backendnn train`: bundled datasets, CSV and .npz files, any backend, a saved model."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backendnn
from backendnn import backends, cli
from backendnn.checkpoint import load, read_metadata

ROOT = Path(backendnn.__file__).resolve().parent.parent


def write_csv(path, n=80, header=True, labels=(3, 5, 7)):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    y = np.array(labels)[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]
    with open(path, "w") as f:
        if header:
            f.write("a,b,c,label\n")
        for xi, yi in zip(X, y):
            f.write(",".join(f"{v:.6f}" for v in xi) + f",{yi}\n")
    return X, y


def run(capsys, *argv):
    rc = cli.main(["train", *argv, "--no-progress"])
    return rc, capsys.readouterr().out


def test_csv_classification_on_each_backend(backend, tmp_path, capsys):
    write_csv(tmp_path / "d.csv")
    save = tmp_path / "m.safetensors"
    rc, out = run(capsys, "--data", str(tmp_path / "d.csv"), "--target", "label",
                  "--layers", "3,8,3", "--epochs", "3", "--backend", backend.name,
                  "--lr", "0.2", "--batch-size", "16", "--save", str(save))
    assert rc == 0
    assert "80 samples (64 train, 16 validation), 3 features, task classify, 3 classes" in out
    assert out.count("epoch=") == 3
    final = [line for line in out.splitlines() if line.startswith("final: ")]
    assert len(final) == 1 and "train loss" in final[0] and "validation loss" in final[0]
    assert "accuracy" in final[0]
    model = load(save, backend=backend)
    assert [type(layer).__name__ for layer in model.layers] == ["Linear", "ReLU", "Linear"]
    meta = read_metadata(save)
    assert meta["extra"]["classes"] == [3.0, 5.0, 7.0] and meta["extra"]["task"] == "classify"
    assert len(meta["extra"]["scale"]["mean"]) == 3
    assert meta["trainer"]["epoch"] == 3 and meta["optimizer"]["class"] == "SGD"
    loss = float(final[0].split("validation loss ")[1].split(",")[0])
    assert loss == pytest.approx(meta["trainer"]["history"][-1]["val_loss"], abs=1e-4)


def test_same_seed_same_run(tmp_path, capsys):
    write_csv(tmp_path / "d.csv", header=False)
    args = ("--data", str(tmp_path / "d.csv"), "--layers", "3,4,3", "--epochs", "2")
    outs = [run(capsys, *args)[1] for _ in range(2)]
    assert outs[0] == outs[1]
    assert "task classify, 3 classes" in outs[0]


def test_npz_regression_with_mse(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3
    np.savez(tmp_path / "r.npz", X=X, y=y)
    rc, out = run(capsys, "--data", str(tmp_path / "r.npz"), "--layers", "4,8,1",
                  "--epochs", "2", "--plot", str(tmp_path / "h.png"))
    assert rc == 0 and "task regress" in out and "MeanSquaredError" in out
    final = [line for line in out.splitlines() if line.startswith("final: ")][0]
    assert "accuracy" not in final
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_breast_cancer_with_one_sigmoid_output(capsys):
    pytest.importorskip("sklearn")
    rc, out = run(capsys, "--data", "breast_cancer", "--layers", "30,8,1", "--epochs", "1")
    assert rc == 0 and "Sigmoid" in out and "BinaryCrossEntropy" in out and "accuracy" in out


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_other_optimizers(optimizer, tmp_path, capsys):
    if not hasattr(backendnn.optim, cli._OPTIMIZERS[optimizer]):
        pytest.skip(f"{optimizer} is not in backendnn.optim yet")
    write_csv(tmp_path / "d.csv")
    rc, out = run(capsys, "--data", str(tmp_path / "d.csv"), "--target", "3", "--epochs", "1",
                  "--optimizer", optimizer)
    assert rc == 0 and f"optimizer {cli._OPTIMIZERS[optimizer]}(lr=" in out


@pytest.mark.parametrize("argv, match", [
    (["--layers", "5,8,3"], r"first size must be the number of input features, 3"),
    (["--layers", "3,8,4"], r"last size must be the number of classes, 3"),
    (["--layers", "3,x,3"], r"expected sizes like 64,32,10"),
    (["--target", "nope"], r"no column named 'nope'"),
    (["--target", "7"], r"target column 7 is out of range for 4 columns"),
    (["--val-fraction", "1.0"], r"--val-fraction must be in \[0, 1\)"),
    (["--val-fraction", "0.995"], r"--val-fraction 0.995 leaves no training samples of 80"),
    (["--batch-size", "0"], r"--batch-size must be >= 1"),
    (["--target", "a", "--layers", "3,4,2"], r"last size must be the number of targets, 1"),
])
def test_bad_options_are_explained(argv, match, tmp_path, capsys):
    write_csv(tmp_path / "d.csv")
    with pytest.raises(SystemExit, match=match):
        run(capsys, "--data", str(tmp_path / "d.csv"), *argv)


def test_bad_data_is_explained(tmp_path, capsys):
    with pytest.raises(SystemExit, match="neither 'digits', 'breast_cancer' nor an existing file"):
        run(capsys, "--data", str(tmp_path / "missing.csv"))
    np.savez(tmp_path / "w.npz", inputs=np.zeros((3, 2)))
    with pytest.raises(SystemExit, match=r"expected arrays 'X' and 'y'.*\['inputs'\]"):
        run(capsys, "--data", str(tmp_path / "w.npz"))
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    with pytest.raises(SystemExit, match=r"bad\.csv, line 2: .*every field must be a number"):
        run(capsys, "--data", str(tmp_path / "bad.csv"))
    np.savez(tmp_path / "y2.npz", X=np.zeros((4, 2)), y=np.zeros((4, 2), dtype=int))
    with pytest.raises(SystemExit, match=r"--task classify needs one target column, got y of shape \(4, 2\)"):
        run(capsys, "--data", str(tmp_path / "y2.npz"), "--task", "classify")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(SystemExit, match=r"must be a \.csv or \.npz file"):
        run(capsys, "--data", str(tmp_path / "d.txt"))


def test_python_m_backendnn_train_digits_prints_progress_and_saves(tmp_path):
    pytest.importorskip("sklearn")
    save = tmp_path / "digits.safetensors"
    env = {k: v for k, v in os.environ.items() if k != backends.ENV_VAR}
    result = subprocess.run(
        [sys.executable, "-m", "backendnn", "train", "--data", "digits", "--layers", "64,16,10",
         "--epochs", "2", "--backend", "numpy", "--batch-size", "64", "--save", str(save),
         "--progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "epoch 0" in result.stderr, "--progress shows the bar on stderr, even when piped"
    assert "1797 samples" in result.stdout and "final: " in result.stdout
    assert f"saved: {save}" in result.stdout
    assert load(save).layers[0].weights.shape == (64, 16)
