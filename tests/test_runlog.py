"""Run logs (runlog.py): save_path/logs/log.csv, TensorBoard event files of the same scalars, and the progress as
plain lines when the output is not a terminal. Tiny runs on CPU: 81 training rows in batches of 8, so 11 updates an
epoch, 22 in a run of two; --log_every 2 logs updates 2, 4, ... 22 of the run."""
import csv
import errno
import io
import math
import os
import re
import signal
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from conftest import make_rows, run_script, write_classes, write_csv
from test_resume import one_thread  # noqa: F401 (one_thread: autouse fixture, one intra-op thread)

UPDATES_PER_EPOCH = 11
# the plain progress line off a terminal: epoch, the epoch's updates, loss, lr, samples/s, ETA
PLAIN = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)/11  loss \d+\.\d{4}  lr \d\.\de[-+]\d\d  [\d.]+ samples/s  "
                   r"ETA (\d+m)?\d+s$")


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("runlog_task")
    classes = write_classes(folder / "classes.json")
    data = write_csv(folder / "train.csv", make_rows(90))
    args = ["-d", classes, "-p", "False", "--train_path", data, "--bert_name", tiny_bert, "--n_epochs", "2",
            "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3", "--max_length", "32", "--precision", "fp32",
            "--log_every", "2"]
    return {"dir": folder, "args": args}


def train_into(task, save, *extra, stderr=None):
    """train.py in this process into `save`: (exit code, stdout, stderr). `stderr`: the stream to write it to."""
    import train
    from config import run_cli
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            run_cli(lambda: train.main([*task["args"], "--save_path", str(save), *extra]))
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def read_log(save) -> list:
    with open(os.path.join(save, "logs", "log.csv"), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def event_files(save) -> list:
    return [n for n in os.listdir(os.path.join(save, "logs")) if n.startswith("events.out.tfevents.")]


def scalars(save) -> dict:
    """tag -> [(step, value)] as TensorBoard reads the folder (a resumed run's purge applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(os.path.join(save, "logs"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(task):
    """One uninterrupted run, logs and TensorBoard on."""
    save = task["dir"] / "reference"
    code, out, err = train_into(task, save)
    assert code == 0, err
    return {"save": str(save), "out": out, "rows": read_log(save)}


def test_log_csv_has_a_row_every_log_every_updates_and_one_per_epoch(reference):
    from checkpoint import verify_folder
    from runlog import COLUMNS
    rows = reference["rows"]
    with open(os.path.join(reference["save"], "logs", "log.csv"), encoding="utf-8") as f:
        assert f.readline().strip() == ",".join(COLUMNS)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [int(r["step"]) for r in steps] == list(range(2, 2 * UPDATES_PER_EPOCH + 1, 2))
    assert [int(r["epoch"]) for r in steps] == [1] * 5 + [2] * 6  # update 12 is the first of epoch 2
    assert [(int(r["epoch"]), int(r["step"])) for r in epochs] == [(1, 11), (2, 22)]
    assert [r["kind"] for r in rows].index("epoch") == 5  # rows in the order they happened
    valid = [c for c in COLUMNS if c.startswith("valid_")]
    assert valid and all(r[c] == "" for r in steps for c in valid)
    for row in rows:
        assert math.isfinite(float(row["train_loss"])) and 0 < float(row["train_loss"]) < 10
        assert float(row["samples_per_s"]) > 0
    # linear warm-up over int(0.1 * 22) = 2 updates, then linear decay to 0 at update 22 (the lr after each update)
    for row in steps + epochs:
        step = int(row["step"])
        assert float(row["learning_rate"]) == pytest.approx(1e-3 * (22 - step) / 20, rel=1e-5, abs=1e-12)
    lrs = [float(r["learning_rate"]) for r in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]
    import json
    with open(os.path.join(reference["save"], "metrics.json"), encoding="utf-8") as f:
        history = json.load(f)["epochs"]
    for row, record in zip(epochs, history):
        for column in valid + ["train_loss"]:
            assert float(row[column]) == pytest.approx(record[column], rel=1e-5)
    verify_folder(reference["save"])  # logs/ does not disturb the model folder's checks


def test_tensorboard_holds_the_same_scalars(reference):
    found = scalars(reference["save"])
    steps = [r for r in reference["rows"] if r["kind"] == "step"]
    epochs = [r for r in reference["rows"] if r["kind"] == "epoch"]
    for tag, column, rows in (("train/loss", "train_loss", steps), ("train/learning_rate", "learning_rate", steps),
                              ("train/samples_per_s", "samples_per_s", steps),
                              ("valid/loss", "valid_loss", epochs), ("valid/accuracy", "valid_accuracy", epochs),
                              ("valid/macro_f1", "valid_macro_f1", epochs)):
        assert [s for s, _ in found[tag]] == [int(r["step"]) for r in rows], tag
        assert [v for _, v in found[tag]] == pytest.approx([float(r[column]) for r in rows], rel=1e-5, abs=1e-9)


def test_no_event_file_with_tensorboard_false_or_without_the_package(task, tmp_path, monkeypatch):
    code, out, err = train_into(task, tmp_path / "off", "--n_epochs", "1", "--tensorboard", "False")
    assert code == 0, err
    assert not event_files(tmp_path / "off") and len(read_log(tmp_path / "off")) == 6
    assert "tensorboard" not in out
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    code, out, err = train_into(task, tmp_path / "missing", "--n_epochs", "1")
    assert code == 0, err
    assert out.count("the tensorboard package is not installed") == 1
    assert not event_files(tmp_path / "missing") and len(read_log(tmp_path / "missing")) == 6


def test_piped_output_is_plain_lines_with_an_eta_and_no_redraws(task, tmp_path):
    """stdout and stderr are pipes, as under SLURM: one line per --log_every updates, no carriage returns."""
    args = [*task["args"], "--save_path", str(tmp_path / "model"), "--n_epochs", "3", "--log_every", "4"]
    done = run_script("train.py", args)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    progress = [m.groups() for m in map(PLAIN.match, lines) if m]
    # updates 4, 8, ... 32 of the 33 of the run; the epoch's updates are those of the run minus earlier epochs'
    assert [(int(e), int(s)) for e, _, s, _ in progress] == [(1, 4), (1, 8), (2, 1), (2, 5), (2, 9), (3, 2), (3, 6),
                                                           (3, 10)]
    others = [line for line in lines if not PLAIN.match(line)]
    assert len(others) < 30  # start-up, one line per epoch, the summary and its report: not per update
    # the shipped example's 3 epochs of 1,113 updates at the default --log_every 50: under 200 lines in all
    assert 3 * 1113 // 50 + len(others) < 200


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_bar_stays(task, tmp_path):
    code, out, err = train_into(task, tmp_path / "tty", "--n_epochs", "1", stderr=Terminal())
    assert code == 0, err
    assert "\r" in err and "epoch 1/1" in err  # tqdm's bar, redrawn in place
    assert not [line for line in out.splitlines() if PLAIN.match(line)]
    assert len(read_log(tmp_path / "tty")) == 6  # the rows do not depend on the terminal


def test_resume_keeps_the_rows_up_to_the_checkpoint_and_goes_on(task, reference, tmp_path, monkeypatch):
    """Stopped after update 7 with checkpoints at 5 and 7; step-7 is then lost, so the run goes on from 5: the row of
    update 6, written after that checkpoint, is dropped and written again, and no step appears twice."""
    import shutil

    import train
    from resume import resume_root
    save = tmp_path / "resumed"
    real = train.Training.after_update

    def after_update(self, micro_steps):
        if self.progress.updates + 1 == 7:
            signal.raise_signal(signal.SIGUSR1)  # a cluster's preemption, right after update 7
        return real(self, micro_steps)
    with monkeypatch.context() as patch:
        patch.setattr(train.Training, "after_update", after_update)
        code, out, err = train_into(task, save, "--save_every", "5")
    assert code == 75, err
    assert [int(r["step"]) for r in read_log(save)] == [2, 4, 6]
    shutil.rmtree(os.path.join(resume_root(str(save)), "step-000007"))
    code, out, err = train_into(task, save, "--save_every", "5", "--resume", "auto")
    assert code == 0 and "resumed from" in out and "step-000005" in out, err
    rows, want = read_log(save), reference["rows"]
    assert [(r["kind"], r["epoch"], r["step"]) for r in rows] == [(r["kind"], r["epoch"], r["step"]) for r in want]
    for got, ref in zip(rows, want):
        assert got["learning_rate"] == ref["learning_rate"]
        if got["kind"] == "epoch":
            assert got["valid_loss"] == ref["valid_loss"] and got["valid_macro_f1"] == ref["valid_macro_f1"]
        elif int(got["step"]) > 6:  # the row of update 6 averages update 6 alone, the resumed run's first
            assert float(got["train_loss"]) == pytest.approx(float(ref["train_loss"]), rel=1e-5)
    found = scalars(save)  # two event files; TensorBoard drops the first one's events after update 5
    assert [s for s, _ in found["train/loss"]] == list(range(2, 23, 2))
    assert [s for s, _ in found["valid/loss"]] == [11, 22]


def test_a_log_write_fault_is_one_line_and_exit_3(task, tmp_path, monkeypatch):
    import runlog
    real, calls = runlog.write_atomic, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 4:  # the header, rows at updates 2 and 4, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path, data)
    monkeypatch.setattr(runlog, "write_atomic", full_disk)
    code, out, err = train_into(task, tmp_path / "full", "--n_epochs", "1")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert "log.csv: cannot write (No space left on device)" in lines[0]
    rows = read_log(tmp_path / "full")
    assert [r["step"] for r in rows] == ["2", "4"]  # complete rows only


def test_durations_read_like_a_clock():
    from runlog import duration
    assert [duration(s) for s in (0, 45, 130, 3600 + 5 * 60 + 9, -3)] == ["0s", "45s", "2m10s", "1h05m", "0s"]
