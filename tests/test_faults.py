"""Faults a long run meets, made real: a learning rate that diverges, a full disk (a small tmpfs, or a file-size
limit where mounting is not allowed), two runs on one folder, 1,000 classes, Ctrl-C from a parent process, a
damaged resumable checkpoint. Each ends in one line and a known exit code, with every complete file complete."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, call, make_rows, write_classes, write_csv


def model_hash(save: str) -> str:
    from checkpoint import sha256_file
    return sha256_file(os.path.join(save, "model.safetensors"))


def train_args(tiny_task, *extra):
    return tiny_task["args"] + ["--precision", "fp32", *extra]


def one_line(err: str) -> str:
    """The one error line of stderr (progress bars and warnings aside); there must be exactly one."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_divergence_stops_with_exit_3_and_leaves_the_last_good_model(tiny_task):
    import predict
    import train
    code, _, err = call(train.main, train_args(tiny_task))
    assert code == 0, err
    good = model_hash(tiny_task["save"])
    code, out, err = call(train.main, train_args(tiny_task, "--lr_main", "1e30", "--lr", "1e30", "--save_every", "1"))
    line = one_line(err)
    assert code == 3 and "training diverged at " in line and "--lr_main 1e+30" in line, err
    assert "the last complete model in" in line and "is in place" in line
    assert model_hash(tiny_task["save"]) == good
    # no resumable checkpoint of a diverged model was written
    from resume import read_state, resume_root, step_folders
    import torch
    for folder in step_folders(resume_root(tiny_task["save"])):
        assert all(torch.isfinite(t).all() for t in read_state(folder)["model"].values())
    code, _, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", tiny_task["classes"], "--save_path",
                                       tiny_task["save"], "--out_dir", str(tiny_task["dir"] / "preds")])
    assert code == 0, err


def test_a_nan_validation_loss_never_becomes_the_best_epoch(tiny_task, monkeypatch):
    import engine
    import train
    real = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: real(*a, **k) * float("nan"))
    code, _, err = call(train.main, train_args(tiny_task))
    assert code == 3 and "the validation loss is nan" in one_line(err), err
    assert "no complete model in" in err and not os.path.exists(os.path.join(tiny_task["save"], "model.safetensors"))


@pytest.fixture
def small_disk(tmp_path):
    """(folder, how): a 12 MB tmpfs where mounting works (ENOSPC when full), else None (use a file-size limit)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_is_one_line_exit_3_and_the_previous_model_stays(tiny_task, small_disk):
    from checkpoint import verify_folder
    folder, mounted = small_disk
    save = str(folder / "model")
    args = [a if a != tiny_task["save"] else save for a in train_args(tiny_task, "--n_epochs", "1")]
    first = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    good = model_hash(save)
    limit = None
    if mounted:  # fill the disk, leaving a megabyte: too little for another model
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * (free - (1 << 20)))
    else:
        limit = 1 << 20  # no file over 1 MB: the weights (4 MB) cannot be written
    second = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args, "--metric", "loss"],
                            capture_output=True, text=True, preexec_fn=(lambda: (
                                signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))) if limit else None)
    line = one_line(second.stderr)
    assert second.returncode == 3, second.stderr
    assert "cannot write (" in line and ("No space left on device" in line or "too large" in line.lower()), line
    assert f"the last complete model in {save} is in place" in line
    assert model_hash(save) == good
    verify_folder(save)
    assert not [n for n in os.listdir(save) if n.startswith(".staging-")]  # staging files removed


def test_a_save_path_that_cannot_be_written_is_refused_before_training(tiny_task):
    import train
    blocker = tiny_task["dir"] / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    args = [a if a != tiny_task["save"] else str(blocker / "model") for a in train_args(tiny_task)]
    started = time.perf_counter()
    code, out, err = call(train.main, args)
    assert code == 2 and "cannot write there" in one_line(err) and "epoch" not in out, err
    assert time.perf_counter() - started < 30


def wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def start_training(tiny_task, *extra) -> subprocess.Popen:
    """A train.py long enough to be caught mid-run (30 epochs of 600 rows)."""
    data = write_csv(tiny_task["dir"] / "long.csv", make_rows(600))
    args = [a if a != tiny_task["train"] else data for a in train_args(tiny_task, "--n_epochs", "30", *extra)]
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_one_writer_per_folder_and_predict_waits_for_a_complete_model(tiny_task):
    import predict
    import train
    lock = os.path.join(tiny_task["save"], "train.lock")
    first = start_training(tiny_task)
    try:
        wait_for(lambda: os.path.exists(lock))
        code, _, err = call(train.main, train_args(tiny_task))
        line = one_line(err)
        assert code == 2 and f"pid {first.pid} on " in line and "another train.py is writing here" in line, err
        if not os.path.exists(os.path.join(tiny_task["save"], "manifest.json")):
            code, _, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", tiny_task["classes"],
                                               "--save_path", tiny_task["save"]])
            assert code == 2 and "has saved no complete model yet" in one_line(err), err
        wait_for(lambda: os.path.exists(os.path.join(tiny_task["save"], "manifest.json")))
        code, _, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", tiny_task["classes"], "--save_path",
                                           tiny_task["save"], "--out_dir", str(tiny_task["dir"] / "preds")])
        assert code == 0, err  # the last complete model, while the run goes on
    finally:
        first.kill()
        first.wait()
    assert os.path.exists(lock)  # SIGKILL leaves it behind; its pid is gone, so the next run takes it over
    code, out, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 0 and "taking over the lock of a run that is gone" in out + err, err
    assert not os.path.exists(lock)  # released at the end


def test_a_lock_from_another_host_is_kept_until_its_heartbeat_is_stale(tiny_task):
    import checkpoint
    import train
    os.makedirs(tiny_task["save"])
    lock = os.path.join(tiny_task["save"], "train.lock")
    with open(lock, "w", encoding="utf-8") as f:
        json.dump({"host": "node-17", "pid": 4242, "job": None, "started": "2026-12-02 10:00:00"}, f)
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 2 and "pid 4242 on node-17" in one_line(err), err
    old = time.time() - checkpoint.STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    code, out, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 0 and "taking over the lock" in out + err, err


def test_ctrl_c_saves_a_resumable_checkpoint_exits_130_and_resumes(tiny_task):
    import train
    from resume import resume_root, step_folders
    run = start_training(tiny_task)
    wait_for(lambda: os.path.exists(os.path.join(tiny_task["save"], "metrics.json")))  # epoch 1 is done
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Ctrl-C: stopped after" in out and "--resume auto" in out and "Traceback" not in err
    assert step_folders(resume_root(tiny_task["save"]))
    code, out, err = call(train.main, train_args(tiny_task, "--resume", "auto", "--n_epochs", "30",
                                                 "--train_path", str(tiny_task["dir"] / "long.csv")))
    assert code == 0 and "resumed from" in out, err


def test_a_second_ctrl_c_stops_at_once_and_leaves_complete_files(tiny_task):
    from checkpoint import verify_folder
    run = start_training(tiny_task)
    wait_for(lambda: os.path.exists(os.path.join(tiny_task["save"], "metrics.json")))
    run.send_signal(signal.SIGINT)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in err, err
    verify_folder(tiny_task["save"])  # the model of epoch 1 (or later) is whole


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_task):
    import train
    from resume import resume_root, step_folders
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "2", "--save_every", "3"))
    assert code == 0, err
    folders = step_folders(resume_root(tiny_task["save"]))
    assert len(folders) == 2
    newest, previous = folders[-1], folders[-2]
    state = os.path.join(newest, "state.pt")
    with open(state, "r+b") as f:  # one flipped byte in the middle: only the hash can tell
        f.seek(os.path.getsize(state) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, out, err = call(train.main, train_args(tiny_task, "--n_epochs", "2", "--resume", "auto"))
    assert code == 0, err
    assert f"{state}: damaged resumable checkpoint" in err and "trying the previous one" in err
    assert f"resumed from {previous}" in out
    # named explicitly, a damaged checkpoint is refused in one line
    with open(os.path.join(previous, "state.pt"), "r+b") as f:
        f.truncate(1000)
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "2", "--resume", previous))
    assert code == 2 and "damaged resumable checkpoint" in one_line(err), err


def test_a_thousand_classes_train_calibrate_and_report_within_a_laptops_memory(tiny_bert, tmp_path):
    names = [f"class{i:04d}" for i in range(1000)]
    classes = write_classes(tmp_path / "classes.json", names)
    rows = [(f"i feel {names[i % 1000]} number {i % 1000} today", names[i % 1000]) for i in range(3000)]
    data = write_csv(tmp_path / "train.csv", rows)
    save = str(tmp_path / "model")
    script = ("import resource, runpy, sys; sys.argv = ['train.py'] + sys.argv[1:]; "
              "code = 0\ntry:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit as e:\n"
              "    code = e.code\nprint('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
              "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, "-d", classes, "--train_path", data, "--bert_name",
                           tiny_bert, "--save_path", save, "--n_epochs", "1", "--max_length", "16",
                           "--batch_size", "64", "--valid_frac", "0.34"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = float(done.stdout.rsplit("peak_rss_mb", 1)[1].split()[0])
    assert peak < 2000, peak
    with open(os.path.join(save, "report", "confusion_matrix.tsv"), encoding="utf-8") as f:
        table = f.read().splitlines()
    assert len(table) == 1001 and len(table[1].split("\t")) == 1001
    assert os.path.getsize(os.path.join(save, "report", "confusion_matrix.png")) < 2_000_000


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tiny_task, monkeypatch):
    import train
    os.makedirs(tiny_task["save"])
    with open(os.path.join(tiny_task["save"], "train.lock"), "w", encoding="utf-8") as f:
        json.dump({"host": "node-03", "pid": 99, "job": "777", "started": "2026-12-02 10:00:00"}, f)
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: refused
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 2 and "pid 99 on node-03" in one_line(err), err
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the same job after a requeue: its earlier self is gone
    code, out, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 0 and "taking over the lock" in out + err, err


def test_many_class_confusion_is_exact_and_the_figure_keeps_the_most_confused():
    import numpy as np

    from metrics import confusion
    from report import most_confused
    rng = np.random.default_rng(0)
    y, pred = (rng.random((300, 400)) < 0.01).astype(int), (rng.random((300, 400)) < 0.02).astype(int)
    assert (confusion(y, pred, 400, True) == y.T @ pred).all()
    matrix = np.diag(np.full(100, 50))
    matrix[7, 3], matrix[90, 91] = 9, 4  # the only mistakes
    assert set(most_confused(matrix, 4)) == {3, 7, 90, 91}


def test_predict_on_a_full_disk_is_one_line_exit_3(tiny_task):
    import train
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 0, err
    limit = 300  # bytes per file: the first predictions CSV cannot be written whole

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out_dir = tiny_task["dir"] / "preds"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), "-f", tiny_task["inputs"], "-d",
                           tiny_task["classes"], "--save_path", tiny_task["save"], "--out_dir", str(out_dir)],
                          capture_output=True, text=True, preexec_fn=small_files, cwd=ROOT)
    assert done.returncode == 3 and "cannot write (File too large)" in one_line(done.stderr), done.stderr
    assert not [n for n in os.listdir(out_dir) if n.endswith(".csv")]  # no half-written predictions


def test_a_lock_that_cannot_be_written_is_removed_and_a_full_disk_is_exit_3(tmp_path, monkeypatch):
    """An empty train.lock left by a full disk would shut out every later run until it went stale."""
    import errno

    from checkpoint import LOCK_FILE, FolderLock
    from config import RunFault

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as patch:
        patch.setattr(json, "dump", full)
        with pytest.raises(RunFault, match="cannot write there: No space left on device"):
            with FolderLock(str(tmp_path / "model")):
                pass
    assert not os.path.exists(tmp_path / "model" / LOCK_FILE)
    with FolderLock(str(tmp_path / "model")):  # the next run takes the folder at once
        assert os.path.exists(tmp_path / "model" / LOCK_FILE)


def test_torch_saves_short_write_is_named_a_full_disk():
    from checkpoint import writing
    from config import RunFault
    with pytest.raises(RunFault, match=r"^m: cannot write \(the disk is probably full: \[enforce fail"):
        with writing("m"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 104578496 vs 104578384")


def test_sigterm_outside_training_unwinds_one_line_exit_143_and_no_temporary_file(tmp_path):
    """predict.py and export.py have no checkpoint to save: SIGTERM unwinds as Ctrl-C does, so a file being
    written is removed, not left as .name.XXXX.tmp."""
    code = ("import signal, sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "from checkpoint import atomic_path\n"
            "from config import run_cli\n"
            "def main():\n"
            f"    with atomic_path({str(tmp_path / 'out.csv')!r}) as tmp:\n"
            "        open(tmp, 'w').write('half')\n"
            "        signal.raise_signal(signal.SIGTERM)\n"
            "    return 0\n"
            "run_cli(main, whole_process=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 143 and done.stderr == "terminated (SIGTERM)\n", done.stderr
    assert os.listdir(tmp_path) == []
    # once main has returned, SIGTERM is the default again: nothing is left to clean up
    after = ("import atexit, signal, sys\n"
             f"sys.path.insert(0, {ROOT!r})\n"
             "from config import run_cli\n"
             "atexit.register(lambda: print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL))\n"
             "run_cli(lambda: 0, whole_process=True)\n")
    done = subprocess.run([sys.executable, "-c", after], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout == "True\n", done.stderr


def test_a_full_disk_while_writing_the_report_leaves_the_earlier_report_whole(tiny_task, monkeypatch):
    """The report is written into a staging folder and put in place by renames: a run that fails half-way through
    it (exit 3) leaves the earlier run's report/ as it was, not a mix of two runs."""
    import errno

    import report
    import train
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "1"))
    assert code == 0, err
    folder = os.path.join(tiny_task["save"], "report")

    def files():
        from checkpoint import sha256_file
        return {n: sha256_file(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}
    before = files()
    assert "learning_curves.png" in before and "metrics.json" in before

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "learning_curves.png")
    monkeypatch.setattr(report, "plot_learning_curves", full)  # after the first files of the new report
    code, _, err = call(train.main, train_args(tiny_task, "--n_epochs", "1", "--seed", "7"))
    assert code == 3 and "No space left on device" in one_line(err), err
    assert files() == before
    assert not [n for n in os.listdir(tiny_task["save"]) if n.startswith(".")]  # no staging folder left


@pytest.mark.parametrize("sig, saves, code", [(signal.SIGINT, True, 130), (signal.SIGTERM, True, 75),
                                              (signal.SIGUSR1, True, 75), (signal.SIGTERM, False, 143)])
def test_the_local_launcher_passes_on_what_a_signal_means(monkeypatch, sig, saves, code):
    """-p True's launcher: 75 (requeue me) only where the workers saved a resumable checkpoint (train.py);
    Ctrl-C is 130 as in one process; a stopped predict.py is 128 + the signal."""
    import torch.distributed.launcher.api as api
    from torch.distributed.elastic.multiprocessing.api import SignalException

    import runtime

    def launch(config, entrypoint):
        def workers(*args):
            raise SignalException("stopped", sig)
        return workers
    monkeypatch.setattr(api, "elastic_launch", launch)
    assert runtime.launch_local_workers("script.py", [], 2, saves_on_signal=saves) == code
