"""Crash safety: SIGKILL real train.py and predict.py runs at random moments, many times, and check that every
file that was complete before is still complete, and that no file under its final name is half-written.

The kills are driven by this file run as a script (`python tests/test_crash_safety.py ...`): it imports torch and
the project once, then forks one child per run, each calling train.main or predict.main exactly as the command
line does, and SIGKILLs it. Forking skips the interpreter start-up, so a dozen kills fit in seconds.
    RELIABILITY_KILLS=200 python -m pytest -q tests/test_crash_safety.py    # a longer soak
"""
import csv
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
KILLS = int(os.environ.get("RELIABILITY_KILLS", "10"))
SEED = int(os.environ.get("RELIABILITY_KILL_SEED", "0"))


# ------------------------------------------------------------------------------------------ the kill driver
def _staging(folder: str, pid: int) -> set:
    """The staging folders of the saves of process `pid` (killed runs leave theirs behind)."""
    try:
        return {n for n in os.listdir(folder) if n.startswith(f".staging-{pid}-")}
    except FileNotFoundError:
        return set()


def _run_child(entry, argv) -> int:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            code = entry(argv) or 0
        except BaseException:  # a child must never fall back into the driver's loop
            code = 3
        os._exit(code)
    return pid


def _watch_saves(pid: int, folder: str, kill_in_save: int = None, delay: float = 0.0):
    """Poll the model folder while `pid` runs; SIGKILL it `delay` s after its save number `kill_in_save` began.
    Returns (exit status, seconds each save's staging folder lived)."""
    seen, started, lived, starts = set(), {}, [], []
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, lived
        now = time.perf_counter()
        current = _staging(folder, pid)
        for name in current - seen:
            started[name] = now
            starts.append(now)
        for name in seen - current:
            lived.append(now - started.pop(name))
        seen = current
        if kill_in_save is not None and len(starts) >= kill_in_save and now >= starts[kill_in_save - 1] + delay:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], lived
        time.sleep(0.0005)


def _kill_inside_a_save(entry, argv, out, rng, saves: int, save_s: float, attempts: int = 4):
    """Run and SIGKILL a child at a random moment inside one of its checkpoint writes (a random save, a random
    moment in the first 80% of the shortest save). The timing is a guess on a loaded machine: a kill that
    landed outside the save (its staging folder already gone) is tried again, up to `attempts` runs.
    Returns (child pid, exit status, killed inside a save, the moment)."""
    for attempt in range(1, attempts + 1):
        target, delay = rng.randint(1, max(1, saves)), rng.uniform(0, 0.8 * save_s)
        child = _run_child(entry, argv)
        status, _ = _watch_saves(child, out, target, delay)
        in_save = os.WIFSIGNALED(status) and bool(_staging(out, child))  # its staging folder outlived it
        if in_save:
            break
    return child, status, in_save, f"save {target} + {delay * 1000:.0f} ms (run {attempt})"


def drive(kind: str, work: str, kills: int, seed: int, argv: list) -> None:
    """Run `kind` (train or predict) once to the end, then `kills` more times, each SIGKILLed; keep a copy of
    the output folder after every kill under work/after_kill_N, and a log in work/kills.json."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertModel  # noqa: F401  (lazy imports that
    # every child would otherwise pay for again)

    import predict
    import train
    entry = train.main if kind == "train" else predict.main
    out = argv[argv.index("--save_path" if kind == "train" else "--out_dir") + 1]
    rng = random.Random(seed)
    log = []
    started = time.perf_counter()
    status, lived = _watch_saves(_run_child(entry, argv), out)
    full_run_s = time.perf_counter() - started
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the run to the end failed ({status})"
    save_s = min(lived) if lived else 0.05  # the shortest save: a kill this early lands inside any save
    for i in range(kills):
        t0 = time.perf_counter()
        if kind == "train" and i % 4 != 3:
            child, status, in_save, moment = _kill_inside_a_save(entry, argv, out, rng, len(lived), save_s)
        else:
            child = _run_child(entry, argv)
            delay = rng.uniform(0.05, full_run_s)
            time.sleep(delay)
            os.kill(child, signal.SIGKILL)
            status = os.waitpid(child, 0)[1]
            moment = f"{delay:.2f} s after start"
            in_save = os.WIFSIGNALED(status) and bool(_staging(out, child))
        killed = os.WIFSIGNALED(status)
        snapshot = os.path.join(work, f"after_kill_{i}")
        if os.path.exists(out):
            shutil.copytree(out, snapshot, symlinks=True)
        log.append({"kill": i, "moment": moment, "killed": killed, "in_save": in_save,
                    "ran_s": time.perf_counter() - t0,
                    "snapshot": snapshot if os.path.exists(out) else None})
    with open(os.path.join(work, "kills.json"), "w") as f:
        json.dump({"full_run_s": full_run_s, "save_s": save_s, "kills": log}, f, indent=1)


def run_driver(kind: str, work, argv: list, kills: int = KILLS, seed: int = SEED) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, __file__, kind, str(work), str(kills), str(seed), "--", *argv],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(work, "kills.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ the checks
def check_model_folder(folder: str) -> str:
    """How a killed save left the folder: 'no model', 'whole', 'previous model kept' (killed before the commit)
    or 'rolled forward' (killed after it). Raises if the folder holds a damaged model."""
    import torch

    from checkpoint import MANIFEST, load_model, sha256_file, verify_folder
    if not os.path.exists(os.path.join(folder, MANIFEST)):
        return "no model"
    with open(os.path.join(folder, MANIFEST)) as f:
        files = json.load(f)["files"]
    unfinished = [n for n, digest in files.items()
                  if not os.path.exists(os.path.join(folder, n)) or sha256_file(os.path.join(folder, n)) != digest]
    leftovers = glob.glob(os.path.join(folder, "**", "*.tmp"), recursive=True) + \
        glob.glob(os.path.join(folder, ".staging-*"))
    verify_folder(folder)
    model, tokenizer, cfg, names, _ = load_model(folder, torch.device("cpu"))
    assert names == ["anger", "joy", "sadness"] and model.classifier.out_features == 3
    for name in os.listdir(folder):  # files outside the manifest are written whole too
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                json.load(f)
    return "rolled forward" if unfinished else "previous model kept" if leftovers else "whole"


def test_train_killed_during_checkpoint_writes_never_loses_the_model(tmp_path, tiny_task):
    argv = tiny_task["args"] + ["--n_epochs", "2", "--metric", "loss", "--precision", "fp32"]
    report = run_driver("train", tmp_path, argv)
    assert sum(k["killed"] for k in report["kills"]) >= KILLS // 2, report  # most runs died before their end
    states = []
    for kill in report["kills"]:
        assert kill["snapshot"], "the first full run left a model: the folder must still exist"
        states.append(check_model_folder(kill["snapshot"]))
    assert "no model" not in states, "a kill lost the model saved by the run before"
    in_save = sum(k["in_save"] for k in report["kills"])
    assert in_save >= KILLS // 3, "too few kills landed inside a save to test anything"
    print(f"\n{len(states)} kills of train.py ({in_save} inside a checkpoint write): model after the kill "
          + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    assert check_model_folder(tiny_task["save"]) != "no model"  # the live folder, after the last kill, loads too


def read_predictions(path: str) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sentences", "label", "anger", "joy", "sadness"]
    for row in rows[1:]:
        assert row[1] in ("anger", "joy", "sadness")
        assert abs(sum(float(p) for p in row[2:]) - 1) < 1e-3
    return rows[1:]


def test_predict_killed_leaves_whole_csvs_or_none_and_resumes(tmp_path, tiny_task):
    import train

    from conftest import call, make_rows, write_csv
    code, _, err = call(train.main, tiny_task["args"] + ["--n_epochs", "1", "--precision", "fp32"])
    assert code == 0, err
    inputs = tmp_path / "many"
    inputs.mkdir()
    expected = {}
    for i in range(5):
        texts = [t for t, _ in make_rows(200, seed=10 + i)]
        write_csv(inputs / f"part{i}.csv", [(t,) for t in texts], header=("sentences",))
        expected[f"part{i}.csv"] = texts
    out = tmp_path / "preds"
    argv = ["-f", str(inputs), "-d", tiny_task["classes"], "-p", "False", "--save_path", tiny_task["save"],
            "--out_dir", str(out), "--precision", "fp32", "--overwrite", "True"]
    report = run_driver("predict", tmp_path / "work", argv, kills=max(4, KILLS // 3))
    assert sum(k["killed"] for k in report["kills"]) >= 1
    whole = 0
    for kill in report["kills"]:
        for path in glob.glob(os.path.join(kill["snapshot"] or "", "*.csv")):
            assert [r[0] for r in read_predictions(path)] == expected[os.path.basename(path)]
            whole += 1
    print(f"\n{len(report['kills'])} kills of predict.py: {whole} predictions files left, all whole")
    # without --overwrite a killed run resumes: files finished before are not predicted again
    shutil.rmtree(out)
    first = call(__import__("predict").main, argv[:-2])
    assert first[0] == 0
    os.remove(out / "part4.csv")  # as if the run had been killed before this file was renamed into place
    code, stdout, _ = call(__import__("predict").main, argv[:-2])
    assert code == 0 and stdout.count("up to date") == 4 and "part4.csv: 200 rows" in stdout


# ------------------------------------------------------------------------------- the journal, crash by crash
@pytest.fixture
def saver(tiny_bert):
    """save(folder, seed): a model folder from a tiny classifier whose head is initialised by `seed`;
    save.heads[seed] is that head's weight, kept even when the save is interrupted."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from checkpoint import save_model
    from config import Config
    from model import BertClassifier
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    encoder = AutoModel.from_pretrained(tiny_bert)

    def save(folder, seed):
        torch.manual_seed(seed)
        model = BertClassifier(encoder, 3)
        save.heads[seed] = model.classifier.weight.detach().clone()
        save_model(str(folder), model, tokenizer, Config(), ["anger", "joy", "sadness"], {"temperature": 1.0})
    save.heads = {}
    return save


def loaded_head(folder):
    import torch

    from checkpoint import load_model
    return load_model(str(folder), torch.device("cpu"))[0].classifier.weight.detach()


def crash_on(monkeypatch, module_attr: str, after: int):
    """Make `module_attr` (e.g. 'checkpoint.os.replace') raise on its call number `after` + 1, as a kill would."""
    import importlib
    module_name, *path, attr = module_attr.split(".")
    target = importlib.import_module(module_name)
    for part in path:
        target = getattr(target, part)
    real, calls = getattr(target, attr), [0]

    def crashing(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)
    monkeypatch.setattr(target, attr, crashing)


def pending_files(folder) -> list:
    return glob.glob(os.path.join(str(folder), "**", "*.tmp"), recursive=True)


def test_crash_after_commit_is_rolled_forward(tmp_path, saver, monkeypatch):
    import torch
    saver(tmp_path, 1)
    with monkeypatch.context() as m:
        crash_on(m, "checkpoint.os.replace", after=2)  # the manifest renamed in, then one file of many
        with pytest.raises(KeyboardInterrupt):
            saver(tmp_path, 2)
    assert pending_files(tmp_path)
    assert torch.equal(loaded_head(tmp_path), saver.heads[2])
    assert not pending_files(tmp_path)


def test_crash_before_commit_keeps_the_old_model(tmp_path, saver, monkeypatch):
    import torch
    saver(tmp_path, 1)
    with monkeypatch.context() as m:
        crash_on(m, "checkpoint.write_json", after=0)  # the manifest is the commit point
        with pytest.raises(KeyboardInterrupt):
            saver(tmp_path, 2)
    assert torch.equal(loaded_head(tmp_path), saver.heads[1])


def test_second_crash_does_not_undo_a_committed_save(tmp_path, saver, monkeypatch):
    """Killed after committing save 2, then killed again while staging save 3 (no load in between)."""
    import torch
    saver(tmp_path, 1)
    with monkeypatch.context() as m:
        crash_on(m, "checkpoint.os.replace", after=1)  # manifest of save 2 in place, no file renamed yet
        with pytest.raises(KeyboardInterrupt):
            saver(tmp_path, 2)
    with monkeypatch.context() as m:
        crash_on(m, "checkpoint.write_json", after=0)  # save 3 staged over the .tmp files, never committed
        with pytest.raises(KeyboardInterrupt):
            saver(tmp_path, 3)
    assert torch.equal(loaded_head(tmp_path), saver.heads[2])


def test_staging_folders_of_killed_saves_are_cleaned(tmp_path, saver):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".staging-{dead.stdout.strip()}-abc"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    saver(tmp_path, 1)
    assert not stale.exists()


if __name__ == "__main__":
    kind, work, kills, seed, _, *rest = sys.argv[1:]
    os.makedirs(work, exist_ok=True)
    drive(kind, work, int(kills), int(seed), rest)
