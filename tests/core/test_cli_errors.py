"""Every command fails clearly: the policy (core/cli.py), option types, yaml errors, and a corpus of broken inputs.

Each corpus case runs a command's `main(argv)` in-process and asserts a non-zero exit, no traceback,
and a message that names the culprit (file, key, line or option). A few cases run as subprocesses,
the way a user meets them.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from core import argtypes as t
from core.checkpoint import save_checkpoint
from core.cli import main_guard
from core.model.yolo import Model
from core.yaml_file import YamlFileError, load_yaml
from tests.helpers import MODEL, REPO

# ---- the policy --------------------------------------------------------------------------------------------

def _raiser(exc: BaseException):
    @main_guard("demo", interrupted="interrupted: nothing lost")
    def main(argv):
        if argv == ["--help"]:
            raise SystemExit(0)
        raise exc
    return main


@pytest.mark.parametrize("exc,code,text", [
    (ValueError("data.yaml: key 'names' is missing"), 2, "demo: error: data.yaml: key 'names' is missing"),
    (FileNotFoundError(2, "No such file or directory", "x.yaml"), 2, "demo: error: x.yaml: No such file"),
    (RuntimeError("CUDA out of memory"), 1, "demo: unexpected error: RuntimeError: CUDA out of memory"),
    (KeyboardInterrupt(), 130, "demo: interrupted: nothing lost"),
])
def test_policy_exit_codes_and_messages(capsys, monkeypatch, exc, code, text):
    monkeypatch.delenv("YEP_DEBUG", raising=False)
    assert _raiser(exc)([]) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert ("--debug" in err) == (code == 1)  # only the unexpected error sends the user to --debug


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    monkeypatch.delenv("YEP_DEBUG", raising=False)
    with pytest.raises(RuntimeError):
        _raiser(RuntimeError("bug"))(["--debug"])
    monkeypatch.setenv("YEP_DEBUG", "1")
    with pytest.raises(ValueError):
        _raiser(ValueError("input"))([])
    assert _raiser(ValueError("input"))(["--help"]) == 0  # argparse's exits pass through as codes


@pytest.mark.slow
def test_unexpected_error_in_a_subprocess_has_no_traceback_unless_asked(tmp_path):
    """core.train's loss check raises FloatingPointError (not an input error) from inside fit."""
    code = ("import sys, core.train as T\n"
            "def boom(*a, **k): raise FloatingPointError('training loss is nan at epoch 0')\n"
            "T.fit = boom\nimport core.train_cli as C; C.fit = boom\nsys.exit(C.main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("YEP_DEBUG", None)
    plain = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
    assert "training loss is nan" in plain.stderr and "YEP_DEBUG=1" in plain.stderr
    debug = subprocess.run([sys.executable, "-c", code, "--debug"], cwd=REPO, env=env, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# ---- option types and yaml ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fn,good,bad", [
    (t.positive_int, ("1", "640"), ("0", "-3", "1.5", "x")),
    (t.non_negative_int, ("0", "8"), ("-1", "two")),
    (t.fraction, ("0", "0.999"), ("1", "1.0", "-0.1", "nan", "x")),
    (t.unit_interval, ("0", "1"), ("1.01", "-1e-9")),
    (t.non_negative_float, ("0", "0.5"), ("-1", "nan")),
    (t.device, ("cpu", "0", "0,1,2,3", "CPU"), ("gpu", "-1", "0,,x", "cuda:a")),
])
def test_option_types(fn, good, bad):
    for text in good:
        fn(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("(", r"\(")):
            fn(text)


def test_yaml_errors_name_file_line_and_column(tmp_path):
    f = tmp_path / "h.yaml"
    f.write_text("lr0: 0.01\nmomentum: [0.9\nmixup: 0\n")
    with pytest.raises(YamlFileError, match=rf"{f}:3:\d+: hyp file is not valid YAML"):
        load_yaml(f, "hyp file")
    f.write_text("- a\n- b\n")
    with pytest.raises(YamlFileError, match=rf"{f}: hyp file must hold a mapping .*got list"):
        load_yaml(f, "hyp file")
    f.write_text("")
    assert load_yaml(f) == {}
    with pytest.raises(YamlFileError, match="hyp file not found"):
        load_yaml(tmp_path / "nope.yaml", "hyp file")


# ---- the corpus of broken inputs ---------------------------------------------------------------------------

def _dataset(root: Path, label_text: str, n: int = 6) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            img = np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / split / f"{i}.png"), img)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{i}.txt").write_text(label_text)
    y = root / "data.yaml"
    y.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return y


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("broken")
    f: dict[str, str] = {}

    def put(name: str, text: str) -> str:
        (d / name).write_text(text)
        f[name] = str(d / name)
        return f[name]

    f["good_data"] = str(_dataset(d / "good", "0 0.5 0.5 0.3 0.3\n"))
    f["nolabel_data"] = str(_dataset(d / "nolabel", "7 0.5 0.5 0.3 0.3\n0 0.5 0.5 0.3\n"))
    put("data_syntax.yaml", "train: [images/train\nval: images/val\n")
    put("data_notrain.yaml", f"path: {d / 'good'}\nval: images/val\nnames: [a]\n")
    put("data_names.yaml", f"path: {d / 'good'}\ntrain: images/train\nval: images/val\nnames: 5\n")
    put("data_nc.yaml", f"path: {d / 'good'}\ntrain: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n")
    put("data_src.yaml", f"path: {d / 'good'}\ntrain: images/nowhere\nval: images/val\nnames: [a]\n")
    put("data_list.yaml", "- train\n- val\n")
    put("hyp_key.yaml", "lr0: 0.01\nlearning_rate: 0.1\n")
    put("hyp_range.yaml", "momentum: 1.5\n")
    put("hyp_type.yaml", "lr0: fast\n")
    put("hyp_syntax.yaml", "lr0: 0.01\n  momentum: 0.9\n")
    put("model_syntax.yaml", "nc: 2\nbackbone: [[-1, 1, Conv, [16, 3]]\n")
    put("model_module.yaml", (REPO / "studies/models/yolov5-cpu.yaml").read_text().replace("SPPF", "SPPX"))
    put("study_syntax.yaml", "name: s\nepochs: 3\n trials: 2\n")
    put("study_field.yaml", "name: s\nepoch: 3\n")
    put("study_sampler.yaml", "name: s\nsampler: sga\n")
    put("study_imgsz.yaml", "name: s\nimgsz: 100\n")
    put("study_type.yaml", "name: s\ntrials: many\n")
    put("text.pt", "not a checkpoint\n")
    model = Model(MODEL, nc=2)
    good = save_checkpoint(d / "good.pt", model, hyp={}, metrics={}, epoch=0)
    raw = good.read_bytes()
    (d / "trunc.pt").write_bytes(raw[: len(raw) // 3])
    f["trunc.pt"] = str(d / "trunc.pt")
    torch.save(model.state_dict(), d / "state_dict.pt")
    f["state_dict.pt"] = str(d / "state_dict.pt")
    torch.save({"format": "yolo-ep-1", "arch": {}, "payload": _Evil()}, d / "evil.pt")
    f["evil.pt"] = str(d / "evil.pt")
    f["stripped.pt"] = str(good)  # no optimizer state: cannot be resumed
    f["dir"] = str(d)
    return f


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/yep_pwned",))


def _train(files, *extra):
    from core.train_cli import main
    return main(["--data", files["good_data"], "--model", MODEL, "--epochs", "1", "--imgsz", "64", "--batch-size", "4",
                 "--workers", "0", "--project", files["dir"] + "/runs", "--name", "x", "--exist-ok", "--no-progress",
                 *extra])


def _fill(arg: str, files: dict[str, str]) -> str:
    """'{name}' -> the fixture file of that name (str.format would read '.yaml' as an attribute)."""
    for k, v in files.items():
        arg = arg.replace("{" + k + "}", v)
    return arg


def _cmd(module: str):
    import importlib
    return importlib.import_module("evolve.__main__" if module == "evolve" else module).main


CORPUS = [
    # (id, command, argv (may use {files}), text the message must contain)
    ("train-imgsz-zero", "train", ["--imgsz", "0"], "--imgsz: '0' must be an integer >= 1"),
    ("train-imgsz-text", "train", ["--imgsz", "big"], "--imgsz: 'big' is not an integer"),
    ("train-imgsz-stride", "train", ["--imgsz", "100"], "--imgsz 100 must be a multiple of the max stride 32"),
    ("train-batch", "train", ["--batch-size", "-4"], "--batch-size: '-4' must be an integer >= 1"),
    ("train-epochs", "train", ["--epochs", "0"], "--epochs: '0' must be an integer >= 1"),
    ("train-workers", "train", ["--workers", "-1"], "--workers: '-1' must be an integer >= 0"),
    ("train-device", "train", ["--device", "gpu0"], "--device: 'gpu0' is not a device"),
    ("train-smoothing", "train", ["--label-smoothing", "1"], "--label-smoothing: '1' must be in [0, 1)"),
    ("train-data-missing", "train", ["--data", "{dir}/none.yaml"], "none.yaml: no such file"),
    ("data-syntax", "train", ["--data", "{data_syntax.yaml}"], "data_syntax.yaml:2:4: data yaml (keys path/train/val/names) is not valid YAML"),
    ("data-no-train", "train", ["--data", "{data_notrain.yaml}"], "key 'train' is missing"),
    ("data-names", "train", ["--data", "{data_names.yaml}"], "data_names.yaml: 'names' must be a non-empty list"),
    ("data-nc", "train", ["--data", "{data_nc.yaml}"], "nc=3 but 'names' has 2 entries"),
    ("data-source", "train", ["--data", "{data_src.yaml}"], "'train' source not found"),
    ("data-list", "train", ["--data", "{data_list.yaml}"], "data_list.yaml: data yaml"),
    ("data-no-labels", "train", ["--data", "{nolabel_data}"], "no usable label in"),
    ("hyp-key", "train", ["--hyp", "{hyp_key.yaml}"], "unknown hyp key 'learning_rate'"),
    ("hyp-range", "train", ["--hyp", "{hyp_range.yaml}"], "hyp 'momentum'=1.5 is outside the allowed range"),
    ("hyp-type", "train", ["--hyp", "{hyp_type.yaml}"], "hyp 'lr0' must be a number, got 'fast'"),
    ("hyp-syntax", "train", ["--hyp", "{hyp_syntax.yaml}"], "hyp_syntax.yaml:2:"),
    ("model-syntax", "train", ["--model", "{model_syntax.yaml}"], "model_syntax.yaml:"),
    ("model-module", "train", ["--model", "{model_module.yaml}"], "unknown module 'SPPX'"),
    ("train-weights-evil", "train", ["--weights", "{evil.pt}"], "evil.pt: refused to load"),
    ("train-resume-stripped", "train", ["--resume", "{stripped.pt}"], "has no optimizer state"),
    ("val-evil", "core.val", ["--weights", "{evil.pt}"], "evil.pt: refused to load"),
    ("val-trunc", "core.val", ["--weights", "{trunc.pt}"], "trunc.pt: not a readable PyTorch checkpoint"),
    ("val-text", "core.val", ["--weights", "{text.pt}"], "text.pt: not a readable PyTorch checkpoint"),
    ("val-foreign", "core.val", ["--weights", "{state_dict.pt}"], "state_dict.pt: not a checkpoint of this project"),
    ("val-conf", "core.val", ["--weights", "{stripped.pt}", "--conf-thres", "2"], "--conf-thres: '2' must be in [0, 1]"),
    ("val-missing", "core.val", ["--weights", "{dir}/none.pt"], "none.pt: no such file"),
    ("strip-foreign", "core.checkpoint", ["strip", "{state_dict.pt}"], "not a checkpoint of this project"),
    ("strip-missing", "core.checkpoint", ["strip", "{dir}/none.pt"], "none.pt: no such file"),
    ("prune-percent", "prune.pipeline", ["--global-percent", "1"], "--global-percent: '1' must be in [0, 1)"),
    ("prune-shortcuts", "prune.pipeline", ["--shortcuts", "-2"], "--shortcuts: '-2' must be an integer >= 0"),
    ("prune-round", "prune.pipeline", ["--round-to", "0"], "--round-to: '0' must be an integer >= 1"),
    ("prune-study-syntax", "prune.pipeline", ["--study", "{study_syntax.yaml}"], "study_syntax.yaml:3:"),
    ("prune-weights-trunc", "prune.pipeline", ["--weights", "{trunc.pt}", "--data", "{good_data}",
                                               "--project", "{dir}/prune"], "trunc.pt: not a readable PyTorch"),
    ("prune-report-missing", "prune.report", ["{dir}/no_run"], "no_run/prune_results.csv: no results"),
    ("evolve-study-missing", "evolve", ["--study", "{dir}/none.yaml"], "none.yaml"),
    ("evolve-study-syntax", "evolve", ["--study", "{study_syntax.yaml}"], "study_syntax.yaml:3:"),
    ("evolve-study-field", "evolve", ["--study", "{study_field.yaml}"], "unknown field(s) ['epoch']"),
    ("evolve-sampler", "evolve", ["--study", "{study_sampler.yaml}"], "'sampler'='sga' is not one of"),
    ("evolve-imgsz", "evolve", ["--study", "{study_imgsz.yaml}"], "'imgsz'=100 must be a multiple of 32"),
    ("evolve-trials-type", "evolve", ["--study", "{study_type.yaml}"], "'trials' must be an integer, got 'many'"),
    ("evolve-workers", "evolve", ["--workers", "0"], "--workers: '0' must be an integer >= 1"),
    ("evolve-gpus", "evolve", ["--gpus", "all"], "--gpus: 'all' is not a device"),
    ("study-field", "evolve.study", ["--study", "{study_field.yaml}"], "unknown field(s) ['epoch']"),
    ("study-report-missing", "evolve.study", ["--report-only", "{dir}/no_run"], "no_run: no such run dir"),
    ("evolve-report-missing", "evolve.report", ["{dir}/no_run"], "no study journal at"),
]


@pytest.mark.parametrize("case,command,argv,culprit", CORPUS, ids=[c[0] for c in CORPUS])
def test_broken_input_fails_clearly(files, capsys, monkeypatch, case, command, argv, culprit):
    monkeypatch.delenv("YEP_DEBUG", raising=False)
    torch.set_num_threads(1)
    args = [_fill(a, files) for a in argv]
    code = _train(files, *args) if command == "train" else _cmd(command)(args)
    out = capsys.readouterr()
    text = out.out + out.err
    assert code != 0, text[-2000:]
    assert "Traceback" not in text and "weights_only" not in text
    assert culprit in text, text[-2000:]
    assert not Path("/tmp/yep_pwned").exists()


def test_corpus_is_large_and_covers_every_command():
    assert len(CORPUS) >= 30
    assert {c[1] for c in CORPUS} == {"train", "core.val", "core.checkpoint", "prune.pipeline", "prune.report",
                                      "evolve", "evolve.study", "evolve.report"}


@pytest.mark.slow
def test_pickled_code_checkpoint_in_a_subprocess(files):
    """The issue's example: core.val on a checkpoint holding code prints our line only, exit 2."""
    r = subprocess.run([sys.executable, "-m", "core.val", "--weights", files["evil.pt"]], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and "weights_only" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"core.val: error: {files['evil.pt']}: refused to load")


# ---- warn and continue -------------------------------------------------------------------------------------

def test_bad_rows_and_a_corrupt_image_warn_and_the_commands_go_on(files, tmp_path, caplog, capsys):
    """A few bad label rows, a corrupt image and background images: training and validation run, exit 0,
    and the warnings name the files."""
    root = tmp_path / "warn"
    data = _dataset(root, "0 0.5 0.5 0.3 0.3\n1 0.4 0.4 0.2 0.2\n")
    (root / "labels" / "train" / "1.txt").write_text("0 0.5 0.5 0.3 0.3\n0 1.7 0.5 0.3 0.3\n")  # one bad row
    (root / "labels" / "train" / "2.txt").unlink()  # a background image
    (root / "images" / "train" / "3.png").write_bytes(b"\x89PNG truncated")
    (root / "labels" / "val" / "4.txt").write_text("0 0.5 0.5\n")  # val: only a bad row
    caplog.set_level(logging.WARNING, logger="core.data")
    torch.set_num_threads(1)
    from core.train_cli import main as train
    assert train(["--data", str(data), "--model", MODEL, "--epochs", "1", "--imgsz", "64", "--batch-size", "4",
                  "--workers", "0", "--project", str(tmp_path), "--name", "w", "--no-progress"]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(root / "labels" / "train" / "1.txt") + ":2: coordinate outside [0, 1]" in warned
    assert str(root / "images" / "train" / "3.png") + ": corrupt image" in warned
    assert str(root / "labels" / "val" / "4.txt") + ":1: wrong column count" in warned
    caplog.clear()
    from core.val import main as val
    assert val(["--weights", str(tmp_path / "w" / "best.pt"), "--data", str(data), "--imgsz", "64",
                "--workers", "0"]) == 0
    assert str(root / "labels" / "val" / "4.txt") in " ".join(r.getMessage() for r in caplog.records)
    assert "Traceback" not in capsys.readouterr().err
