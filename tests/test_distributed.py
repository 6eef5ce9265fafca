"""DDP for real on CPU: two gloo processes started by torchrun train to the weights one process reaches with the
same global batch, report the same validation metrics, save a model that one process loads, and a sharded
predict.py (two workers started by -p True's own launcher) writes what one process writes, in input order."""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, call, make_rows, write_classes, write_csv
from test_resume import assert_same_run, final_state, one_thread  # noqa: F401 (one_thread: autouse fixture)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*train_args, launcher=()) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), *launcher, os.path.join(ROOT, "train.py"), *train_args]


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_bert, tmp_path_factory) -> str:
    """tiny_bert without dropout: with it, two ranks draw other masks than one process does."""
    folder = str(tmp_path_factory.mktemp("tiny_bert_no_dropout"))
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    path = os.path.join(folder, "config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    return folder


@pytest.fixture(scope="module")
def trained(no_dropout_bert, tmp_path_factory):
    """The same training by torchrun (2 x batch 4) and by one process (batch 8)."""
    import train
    folder = tmp_path_factory.mktemp("ddp")
    classes = write_classes(folder / "classes.json")
    # 99 rows: 9 held out, 90 to train = 11 global batches of 8 and one of 2 (one row per rank, no repeat);
    # the 9 validation rows are odd, so one rank evaluates a padded repeat that must not count twice.
    data = write_csv(folder / "train.csv", make_rows(99))
    common = ["-d", classes, "--train_path", data, "--bert_name", no_dropout_bert, "--dropout_p", "0",
              "--n_epochs", "2", "--lr_main", "3e-3", "--lr", "2e-2", "--max_length", "32", "--precision", "fp32",
              "--device", "cpu", "--log_every", "1000", "--save_every", "100"]
    ddp = subprocess.run(torchrun(*common, "-p", "True", "--batch_size", "4", "--save_path", str(folder / "ddp")),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    code, out, err = call(train.main, [*common, "-p", "False", "--batch_size", "8",
                                       "--save_path", str(folder / "single")])
    assert code == 0, err
    return {"dir": folder, "bert": no_dropout_bert, "common": common, "ddp": folder / "ddp",
            "single": folder / "single", "ddp_out": ddp.stdout}


def test_ddp_trains_to_the_weights_of_one_process_with_the_same_global_batch(trained):
    ddp = load_file(trained["ddp"] / "model.safetensors")
    single = load_file(trained["single"] / "model.safetensors")
    assert ddp.keys() == single.keys()
    # float sums in another order (two halves of 4 rows, then an all-reduce): measured up to 4.4e-5 after Adam,
    # where a batch dealt wrongly or a gradient not averaged moves weights by about the learning rate (3e-3)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=0, atol=2e-4, msg=name)
    assert not any(k.startswith("module.") for k in ddp)  # saved unwrapped
    initial = load_file(os.path.join(trained["bert"], "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert (ddp[f"encoder.{name}"] - initial[name]).abs().max() > 1e-3  # trained, so equality means something


def test_ddp_reports_metrics_of_the_whole_validation_set_once(trained):
    with open(trained["ddp"] / "metrics.json") as f:
        ddp = json.load(f)["epochs"]
    with open(trained["single"] / "metrics.json") as f:
        single = json.load(f)["epochs"]
    for d, s in zip(ddp, single, strict=True):
        assert d["valid_accuracy"] == s["valid_accuracy"] and d["valid_macro_f1"] == s["valid_macro_f1"]
        assert abs(d["valid_loss"] - s["valid_loss"]) < 1e-5
    out = trained["ddp_out"]
    assert out.count("epoch 1: train loss") == 1 and out.count("epoch 2: train loss") == 1  # rank 0 alone
    assert "batch 4 per process x 2 process(es) x 1 accumulation = 8 per update" in out
    assert "train 90 rows, validation 9 rows" in out


def read_predictions(folder) -> dict:
    result = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".csv"):
            with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
                result[name] = list(csv.reader(f))
    return result


def test_sharded_predict_equals_one_process_in_input_order(trained, tmp_path):
    import predict
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", [(t,) for t, _ in make_rows(23, seed=1)], header=("sentences",))
    (inputs / "b.txt").write_text("\n".join(t for t, _ in make_rows(7, seed=2)) + "\n", encoding="utf-8")
    write_csv(inputs / "c.csv", [("i feel happy",)], header=("sentences",))  # fewer rows than ranks on its own
    common = ["-f", str(inputs), "-d", str(trained["dir"] / "classes.json"), "--save_path", str(trained["ddp"]),
              "--device", "cpu", "--batch_size", "4"]
    # two workers through -p True's own launcher (what a machine with two GPUs gets), here on CPU with gloo
    sharded = subprocess.run(
        [sys.executable, "-c", "import sys, runtime; sys.exit(runtime.launch_local_workers("
                               "'predict.py', sys.argv[1:], 2))", *common, "-p", "True", "--out_dir",
         str(tmp_path / "sharded")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "x2" in sharded.stdout and sharded.stdout.count("a.csv: 23 rows") == 1
    code, out, err = call(predict.main, [*common, "-p", "False", "--out_dir", str(tmp_path / "single")])
    assert code == 0, err
    got, want = read_predictions(tmp_path / "sharded"), read_predictions(tmp_path / "single")
    assert got.keys() == want.keys() == {"a.csv", "b.csv", "c.csv"}
    for name in want:
        assert [r[:2] for r in got[name]] == [r[:2] for r in want[name]], name  # texts and labels, in order
        for g, w in zip(got[name][1:], want[name][1:], strict=True):
            assert max(abs(float(x) - float(y)) for x, y in zip(g[2:], w[2:])) <= 2e-6
    assert [r[0] for r in want["a.csv"][1:]] == [t for t, _ in make_rows(23, seed=1)]


def test_sharded_predict_input_error_exits_2_on_every_rank(trained, tmp_path):
    """A bad label map under two workers: each rank says what is wrong and exits 2, no abort at exit."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", [("i feel happy",)], header=("sentences",))
    wrong = tmp_path / "classes.json"
    wrong.write_text(json.dumps({"x": 0, "y": 1}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, runtime; sys.exit(runtime.launch_local_workers("
                               "'predict.py', sys.argv[1:], 2))", "-f", str(inputs), "-d", str(wrong),
         "--save_path", str(trained["ddp"]), "--device", "cpu", "-p", "True", "--out_dir", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "differs from the one the model was trained with" in proc.stderr
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr


def usr1_once_saved(argv: list, save, after: int = 0):
    """Run argv, send SIGUSR1 once a checkpoint newer than step `after` exists; (exit code, output)."""
    from resume import resume_root, step_folders

    def newest():
        found = step_folders(resume_root(str(save)))
        return int(os.path.basename(found[-1])[5:]) if found else -1
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while newest() <= after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=120)[0]
    return proc.returncode, out, newest()


def test_ddp_preempted_twice_resumes_to_the_weights_of_an_uninterrupted_run(trained, tmp_path):
    """SIGUSR1 to -p True's own launcher, then to torchrun (as slurm/multi_node.sh sends it): both ranks stop
    after the same update, rank 0 saves both ranks' RNG states, and the run ends bitwise where the
    uninterrupted DDP run ended."""
    save = tmp_path / "preempted"
    args = [*trained["common"], "-p", "True", "--batch_size", "4", "--save_path", str(save), "--resume", "auto",
            "--save_every", "2"]
    launcher = [sys.executable, "-c", "import sys, runtime; sys.exit(runtime.launch_local_workers('train.py', "
                                      "sys.argv[1:], 2, saves_on_signal=True))", *args]  # as train.py calls it
    code, out, first_stop = usr1_once_saved(launcher, save)
    assert code == 75, out[-3000:]  # the launcher passes the workers' code on, for the batch script
    assert "preemption signal: stopped after update" in out
    handled = ["--signals_to_handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]  # else torchrun dies of USR1
    code, out, second_stop = usr1_once_saved(torchrun(*args, launcher=handled), save, after=first_stop)
    assert f"resumed from {save}/resume/step-{first_stop:06d}" in out
    assert "preemption signal: stopped after update" in out and "got signal: 10" in out, out[-3000:]
    assert 2 <= first_stop < second_stop < 24
    last = subprocess.run(torchrun(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    assert f"resumed from {save}/resume/step-{second_stop:06d}" in last.stdout
    assert_same_run(final_state(save), final_state(trained["ddp"]))
