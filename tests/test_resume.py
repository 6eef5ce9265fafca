"""Exact resume: a run stopped anywhere (a preemption signal, or SIGKILL) and resumed ends where an uninterrupted
run ends, bitwise: weights, optimizer state, validation history. The tiny model keeps its dropout, so the RNG
state must come back exactly too."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, call, make_rows, write_classes, write_csv

UPDATES_PER_EPOCH = 11  # 81 training rows (90 minus a 10% split) in batches of 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in subprocesses: on a busy 2-core machine two threads spend most of their
    time waiting for each other (a tiny run took 42 s with two, 9 s with one). Results stay bitwise comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("resume_task")
    classes = write_classes(folder / "classes.json")
    train = write_csv(folder / "train.csv", make_rows(90))
    args = ["-d", classes, "-p", "False", "--train_path", train, "--bert_name", tiny_bert, "--n_epochs", "2",
            "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3", "--max_length", "32", "--log_every", "1000",
            "--save_every", "100"]  # 100: at the end of each epoch only
    return {"dir": folder, "args": args}


def train_args(task, save, precision, *extra):
    return [*task["args"], "--save_path", str(save), "--precision", precision, *extra]


@pytest.fixture(scope="module")
def reference(task):
    """Uninterrupted runs, one per precision, trained on first use."""
    import train
    done = {}

    def get(precision):
        if precision not in done:
            save = task["dir"] / f"reference-{precision}"
            code, out, err = call(train.main, train_args(task, save, precision))
            assert code == 0, err
            done[precision] = final_state(save)
        return done[precision]
    return get


def final_state(save) -> dict:
    """The newest resumable checkpoint (the end of the last epoch for a finished run) and metrics.json."""
    from resume import STATE_FILE, resume_root, step_folders
    newest = step_folders(resume_root(str(save)))[-1]
    state = torch.load(os.path.join(newest, STATE_FILE), weights_only=True)
    with open(os.path.join(save, "metrics.json"), encoding="utf-8") as f:
        state["metrics"] = json.load(f)
    return state


def assert_same_run(got: dict, want: dict) -> None:
    """Bitwise the same weights, optimizer moments, schedule and validation history."""
    assert got["progress"]["updates"] == want["progress"]["updates"]
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"weights differ: {name}"
    for key, moments in want["optimizer"]["state"].items():
        for moment, tensor in moments.items():
            assert torch.equal(got["optimizer"]["state"][key][moment], tensor), f"optimizer state differs: {moment}"
    assert got["scheduler"]["last_epoch"] == want["scheduler"]["last_epoch"]
    valid = [{k: v for k, v in e.items() if k.startswith("valid_")} for e in want["metrics"]["epochs"]]
    assert [{k: v for k, v in e.items() if k.startswith("valid_")} for e in got["metrics"]["epochs"]] == valid
    assert got["metrics"]["best_epoch"] == want["metrics"]["best_epoch"]


def signal_after(monkeypatch, updates: int, signum=signal.SIGUSR1):
    """Make this process receive `signum` right after its `updates`-th optimizer update, as a cluster would."""
    import engine
    real = engine.train_one_epoch
    count = [0]

    def patched(*args):
        on_update = args[-1]

        def hooked(batches_done):
            count[0] += 1
            if count[0] == updates:
                signal.raise_signal(signum)  # the handler runs before raise_signal returns
            return on_update(batches_done)
        return real(*args[:-1], hooked)
    monkeypatch.setattr(engine, "train_one_epoch", patched)


@pytest.mark.parametrize("precision, stops", [("fp32", [4, 9]), ("bf16", [UPDATES_PER_EPOCH])])
def test_stopped_by_signals_and_resumed_ends_bitwise_equal(task, reference, monkeypatch, tmp_path, precision, stops):
    """Stops mid-epoch (USR1), in the second epoch (TERM), on the last update of an epoch; then runs to the end."""
    import train
    save = tmp_path / "run"
    for i, updates in enumerate(stops):
        with monkeypatch.context() as patch:
            signal_after(patch, updates, signal.SIGTERM if i % 2 else signal.SIGUSR1)
            code, out, err = call(train.main, train_args(task, save, precision, "--resume", "auto"))
        assert code == 75, err
        assert "stopped after update" in out and "--resume auto" in out
        if i == 0:  # --save_every 100 has not come due: the signal alone saved, after the update it arrived in
            from resume import resume_root, step_folders
            assert [os.path.basename(f) for f in step_folders(resume_root(str(save)))] == [f"step-{updates:06d}"]
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are put back
    code, out, err = call(train.main, train_args(task, save, precision, "--resume", "auto"))
    assert code == 0, err
    assert f"resumed from {save}/resume/step-{sum(stops):06d}" in out
    assert final_state(save)["progress"]["updates"] == 2 * UPDATES_PER_EPOCH
    assert_same_run(final_state(save), reference(precision))


def test_sigkill_at_several_steps_then_resume_ends_bitwise_equal(task, reference, tmp_path):
    """SIGKILL (nothing can be saved) once step-N exists, for several N; --save_every 1 keeps N fresh."""
    from resume import STATE_FILE, resume_root, step_folders
    save = tmp_path / "killed"
    argv = [sys.executable, os.path.join(ROOT, "train.py"),
            *train_args(task, save, "fp32", "--resume", "auto", "--save_every", "1")]
    killed_at = []
    for target in (3, UPDATES_PER_EPOCH + 4):
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = step_folders(resume_root(str(save)))
            if found and int(os.path.basename(found[-1])[5:]) >= target:
                proc.kill()
                break
            time.sleep(0.01)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        proc.stderr.close()
        newest = step_folders(resume_root(str(save)))[-1]
        killed_at.append(int(os.path.basename(newest)[5:]))
        assert os.path.isfile(os.path.join(newest, STATE_FILE))
    assert killed_at[0] < UPDATES_PER_EPOCH < killed_at[1] < 2 * UPDATES_PER_EPOCH
    import train
    code, out, err = call(train.main, argv[2:])
    assert code == 0, err
    assert_same_run(final_state(save), reference("fp32"))
    assert len(step_folders(resume_root(str(save)))) == 2  # only the last two are kept
    assert not [n for n in os.listdir(resume_root(str(save))) if n.startswith(".")]


def test_resume_refuses_other_settings_and_missing_folders(task, reference, tmp_path):
    import train
    reference("fp32")
    save = task["dir"] / "reference-fp32"
    code, out, err = call(train.main, train_args(task, save, "fp32", "--resume", "auto", "--lr", "1e-2"))
    assert code == 2
    assert err.count("\n") == 1 and "--lr 0.005 (now 0.01)" in err and "Traceback" not in err
    code, out, err = call(train.main, train_args(task, save, "fp32", "--resume", str(tmp_path / "nowhere")))
    assert code == 2 and "no resumable checkpoint here" in err and err.count("\n") == 1


def test_a_finished_run_resumed_does_nothing_more(task, reference):
    import train
    want = reference("fp32")
    save = f"{task['dir'] / 'reference-fp32'}/."  # the same folder written another way is the same run
    code, out, err = call(train.main, train_args(task, save, "fp32", "--resume", "auto"))
    assert code == 0, err
    assert "epoch 1/2" not in out + err and "done: best epoch" in out
    assert_same_run(final_state(save), want)


def test_auto_takes_the_newest_complete_step_and_ignores_half_written_ones(tmp_path):
    from resume import find_resumable, resume_root
    root = resume_root(str(tmp_path))
    for name, complete in (("step-999999", True), ("step-1000000", True), ("step-1000001", False),
                           (".step-000200.x1y2", True)):  # a folder without state.pt, a crash's temp folder
        os.makedirs(os.path.join(root, name))
        if complete:
            open(os.path.join(root, name, "state.pt"), "wb").close()
    assert find_resumable("auto", str(tmp_path)) == os.path.join(root, "step-1000000")  # by number, not by name
    assert find_resumable("auto", str(tmp_path / "elsewhere")) is None


def test_resume_refuses_rows_or_classes_changed_since_the_checkpoint(task, monkeypatch, tmp_path):
    """The checkpoint records a SHA-256 of the classes and of every training and validation row: a file edited in
    place (same path, so the settings agree) is refused in one line, and resuming with the files as they were
    goes on."""
    import train
    classes, data = write_classes(tmp_path / "classes.json"), write_csv(tmp_path / "train.csv", make_rows(90))
    args = [*task["args"], "-d", classes, "--train_path", data, "--save_path", str(tmp_path / "run"),
            "--precision", "fp32", "--resume", "auto"]
    with monkeypatch.context() as patch:
        signal_after(patch, 4)
        code, out, err = call(train.main, args)
    assert code == 75, err
    original = {path: open(path, encoding="utf-8").read() for path in (classes, data)}
    rows = make_rows(90)
    edits = {classes: lambda: write_classes(classes, ["joy", "anger", "sadness"]),  # two classes' ids swapped
             data: lambda: write_csv(data, rows[:-1]),  # one row fewer
             "relabelled": lambda: write_csv(data, [(rows[0][0], "sadness"), *rows[1:]])}
    for edit in edits.values():
        edit()
        code, out, err = call(train.main, args)
        assert code == 2, (out, err)
        assert err.count("\n") == 1 and "the checkpoint was trained on other rows or classes" in err, err
        assert "Traceback" not in err and "resumed from" not in out
        for path, text in original.items():
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    code, out, err = call(train.main, args)
    assert code == 0, err
    assert f"resumed from {tmp_path}/run/resume/step-000004" in out
