"""`backendnn train`: bundled datasets, CSV and .npz files, any backend, a saved model."""
import os
import re
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
    assert fails(capsys, match, "--data", str(tmp_path / "d.csv"), *argv)


def fails(capsys, match, *argv):
    """Run `backendnn train`: exit code 2, one line on stderr matching `match`."""
    rc = cli.main(["train", *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


def test_bad_data_is_explained(tmp_path, capsys):
    fails(capsys, "neither 'digits', 'breast_cancer' nor an existing file",
          "--data", str(tmp_path / "missing.csv"))
    np.savez(tmp_path / "w.npz", inputs=np.zeros((3, 2)))
    fails(capsys, r"expected arrays 'X' and 'y'.*\['inputs'\]", "--data", str(tmp_path / "w.npz"))
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    fails(capsys, r"bad\.csv, line 2, column 2: 'five' is not a number",
          "--data", str(tmp_path / "bad.csv"))
    np.savez(tmp_path / "y2.npz", X=np.zeros((4, 2)), y=np.zeros((4, 2), dtype=int))
    fails(capsys, r"--task classify needs one target column, got y of shape \(4, 2\)",
          "--data", str(tmp_path / "y2.npz"), "--task", "classify")
    (tmp_path / "d.txt").write_text("1,2\n")
    fails(capsys, r"must be a \.csv or \.npz file", "--data", str(tmp_path / "d.txt"))


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


# --- issue 15: regression, text labels, predict, one-line errors, optional packages ----

def write_regression(path, n=300, noise=10.0):
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=n, n_features=6, noise=noise, random_state=0)
    with open(path, "w") as f:
        f.write(",".join(f"x{i}" for i in range(6)) + ",price\n")
        for xi, yi in zip(X, y):
            f.write(",".join(f"{v:.6f}" for v in xi) + f",{yi:.4f}\n")
    return X, y


@pytest.mark.slow
def test_regression_is_standardised_and_predict_gives_own_units(tmp_path, capsys):
    pytest.importorskip("sklearn")
    X, y = write_regression(tmp_path / "reg.csv")
    save = tmp_path / "reg.safetensors"
    rc, out = run(capsys, "--data", str(tmp_path / "reg.csv"), "--epochs", "8",
                  "--save", str(save))  # the defaults, which diverged before
    assert rc == 0 and "task regress (auto: non-integer targets)" in out
    assert "targets standardised by the training split" in out
    r2 = float(out.split("validation loss")[1].split("r2 ")[1].split()[0])
    assert r2 > 0.9
    rc = cli.main(["predict", "--model", str(save), "--data", str(tmp_path / "reg.csv"),
                   "--out", str(tmp_path / "p.csv")])
    assert rc == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "price" and len(lines) == 301
    pred = np.array([float(v) for v in lines[1:]])
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.35 * y.std()  # in the targets' units


def test_many_integer_targets_are_regressed_and_the_rule_is_shown(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.round(50 * X[:, 0]).astype(int)  # many distinct integers
    np.savez(tmp_path / "ints.npz", X=X, y=y)
    rc, out = run(capsys, "--data", str(tmp_path / "ints.npz"), "--epochs", "1")
    assert rc == 0 and re.search(r"task regress \(auto: \d+ distinct integer targets, more "
                                 r"than 20\)", out)
    assert "at most 20 distinct" in cli.build_parser()._subparsers._group_actions[0] \
        .choices["train"].format_help().replace("\n", " ").replace("  ", " ")


@pytest.mark.slow
def test_text_labels_train_and_come_back_from_predict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 2))
    names = np.array(["cat", "dog, big", "emu"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0)]
    with open(tmp_path / "animals.csv", "w") as f:
        f.write("w,h,kind\n")
        for xi, k in zip(X, names):
            f.write(f"{xi[0]:.4f},{xi[1]:.4f},\"{k}\"\n")
    with open(tmp_path / "new.csv", "w") as f:
        f.write("w,h\n3,3\n-3,-3\n")
    save = tmp_path / "m.safetensors"
    rc, out = run(capsys, "--data", str(tmp_path / "animals.csv"), "--epochs", "30",
                  "--save", str(save), "--log-every", "0")
    assert rc == 0 and "3 classes (auto: the targets are text labels)" in out
    assert read_metadata(save)["extra"]["classes"] == ["cat", "dog, big", "emu"]
    assert cli.main(["predict", "--model", str(save), "--data", str(tmp_path / "new.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kind,probability"
    assert lines[1].startswith("emu,") and lines[2].startswith("cat,")


@pytest.mark.parametrize("content, match", [
    ("a,b,y\n", r"has a header but no data rows"),
    ("", r"is empty"),
    ("a,b,y\n1,2,0\n\n3,,1\n", r"line 4, column 2 \('b'\): missing value"),
    ("a,b,y\n1,2,0\n3,nan,1\n", r"line 3, column 2 \('b'\): 'nan'"),
    ("a,b,y\n1,2,0\n3,4,nan\n", r"line 3, column 3 \('y'\): 'nan'"),
    ("a,b,y\n1,2,0\n3,4\n", r"line 3: 2 fields, expected 3"),
])
def test_csv_mistakes_name_the_line_as_an_editor_shows_it(tmp_path, capsys, content, match):
    (tmp_path / "d.csv").write_text(content)
    fails(capsys, match, "--data", str(tmp_path / "d.csv"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the diverging run overflows
def test_every_user_mistake_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    write_csv(tmp_path / "d.csv")
    data = ("--data", str(tmp_path / "d.csv"))
    fails(capsys, r"--lr must be a positive number, got -1", *data, "--lr", "-1")
    fails(capsys, r"--plot needs at least one epoch", *data, "--epochs", "0", "--plot", "x.png")
    fails(capsys, r"is neither .* nor an existing file", "--data", "nope.csv")
    fails(capsys, r"training loss became (nan|inf).*epoch 0, batch \d+", *data, "--lr", "1e30")
    monkeypatch.setenv(backends.ENV_VAR, "nonsense")
    fails(capsys, r"BACKENDNN_BACKEND='nonsense' is not usable", *data)
    monkeypatch.delenv(backends.ENV_VAR)
    with pytest.raises(ValueError, match="--lr must be a positive"):  # --debug: the traceback
        cli.main(["train", *data, "--lr", "-1", "--debug"])


@pytest.mark.parametrize("flag, module, extra", [("--save", "safetensors", "io"),
                                                 ("--plot", "matplotlib", "plot")])
def test_missing_optional_packages_stop_before_training(tmp_path, capsys, monkeypatch,
                                                         flag, module, extra):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == module else real(name, *a))
    write_csv(tmp_path / "d.csv")
    fails(capsys, rf"pip install 'backendnn\[{extra}\]'", "--data", str(tmp_path / "d.csv"),
          flag, str(tmp_path / "out"))
    assert "epoch=" not in capsys.readouterr().out


def test_predict_refuses_what_it_cannot_use(tmp_path, capsys):
    rc = cli.main(["predict", "--model", str(tmp_path / "none.safetensors"), "--data", "x.csv"])
    assert rc == 2 and "is not an existing file" in capsys.readouterr().err


@pytest.mark.parametrize("pandas", [True, False])
def test_csv_reader_paths_agree(tmp_path, monkeypatch, pandas):
    from backendnn.data import read_csv

    if pandas:
        pytest.importorskip("pandas")
    else:
        monkeypatch.setitem(sys.modules, "pandas", None)  # NumPy's C reader
    X, y = write_csv(tmp_path / "d.csv")
    table = read_csv(tmp_path / "d.csv", "label")
    np.testing.assert_allclose(table.X, X, atol=1e-6)
    np.testing.assert_array_equal(table.y, y)
    assert table.feature_names == ["a", "b", "c"] and table.target_name == "label"
    (tmp_path / "t.csv").write_text("a,b,kind\n1,2,x\n3,4,y\n")
    table = read_csv(tmp_path / "t.csv")
    assert table.y.tolist() == ["x", "y"] and table.X.tolist() == [[1, 2], [3, 4]]


@pytest.mark.slow
def test_csv_reading_is_within_2x_of_a_c_reader(tmp_path):
    """50,000 x 41 took 2.2 s (pandas: 0.13 s); the baseline here is pandas when
    installed, else NumPy's loadtxt, on a 20,000 x 41 file."""
    import time

    from backendnn.data import read_csv

    rng = np.random.default_rng(0)
    path = tmp_path / "big.csv"
    np.savetxt(path, rng.normal(size=(20000, 41)), delimiter=",", fmt="%.6g",
               header=",".join(f"f{i}" for i in range(41)), comments="")

    def best(fn):
        times = []
        for _ in range(2):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    try:
        import pandas as pd
        baseline = best(lambda: pd.read_csv(path).to_numpy())
    except ImportError:
        baseline = best(lambda: np.loadtxt(path, delimiter=",", skiprows=1))
    assert best(lambda: read_csv(path)) < 2 * baseline + 0.05
