"""cpu_threads: the thread count from the CPUs this process may use (affinity, cgroup quota, SLURM), the OpenMP wait
policy set before torch loads, explicit settings winning, and adapt() giving threads back to a busy neighbour."""
import os
import subprocess
import sys

import pytest

import cpu_threads
from conftest import ROOT


def fresh_choice(monkeypatch, environ: dict, quota=None, affinity=(0, 1)) -> tuple:
    monkeypatch.setattr(cpu_threads, "_cgroup_quota", lambda: quota)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(affinity))
    monkeypatch.setattr(cpu_threads, "CHOICE", {})
    monkeypatch.setattr(cpu_threads, "WATCH", {"cpus": None, "last": None, "changes": 0})
    return cpu_threads.configure(environ), environ


@pytest.mark.parametrize("environ, quota, affinity, threads", [
    ({}, None, range(8), "8"),                            # the whole affinity mask
    ({}, 3, range(8), "3"),                               # a container's CPU quota (2.5 CPUs round up to 3)
    ({"SLURM_CPUS_PER_TASK": "2"}, None, range(64), "2"),  # a SLURM task on a big node
    ({"SLURM_CPUS_PER_TASK": "16"}, 4, range(8), "4"),     # the smallest limit wins
    ({"OMP_NUM_THREADS": "5"}, 2, range(8), "5"),          # the user's choice wins
])
def test_threads_follow_the_smallest_limit_unless_the_user_chose(monkeypatch, environ, quota, affinity, threads):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as at the top of train.py, before torch loads
    choice, env = fresh_choice(monkeypatch, dict(environ), quota, tuple(affinity))
    assert env["OMP_NUM_THREADS"] == threads
    assert choice["threads"].startswith(threads)
    assert (cpu_threads.WATCH["cpus"] is None) == ("OMP_NUM_THREADS" in environ)  # adapting only our own choice


def test_wait_policy_is_set_unless_the_user_set_one(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    _, env = fresh_choice(monkeypatch, {})
    assert env["GOMP_SPINCOUNT"] == str(cpu_threads.WAIT_SPIN) and "OMP_WAIT_POLICY" not in env
    choice, env = fresh_choice(monkeypatch, {"OMP_WAIT_POLICY": "PASSIVE"})
    assert "GOMP_SPINCOUNT" not in env and choice["wait"] == "OMP_WAIT_POLICY=PASSIVE"


def test_cgroup_quota_is_read_from_cpu_max(monkeypatch, tmp_path):
    real_open = open

    def fake_open(path, *a, **k):
        if path == "/sys/fs/cgroup/cpu.max":
            return real_open(tmp_path / "cpu.max", *a, **k)
        return real_open(path, *a, **k)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    monkeypatch.setattr("builtins.open", fake_open)
    assert cpu_threads._cgroup_quota() == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_threads._cgroup_quota() is None


def test_train_py_sets_openmp_before_torch_loads_and_says_so(tmp_path):
    """In a fresh process, the environment train.py gives OpenMP is what torch then runs with."""
    code = ("import sys; sys.argv = ['train.py']; import os; os.environ.pop('OMP_NUM_THREADS', None); "
            "os.environ.pop('GOMP_SPINCOUNT', None); import train, torch, cpu_threads; "
            "print(os.environ['GOMP_SPINCOUNT'], torch.get_num_threads(), len(os.sched_getaffinity(0))); "
            "print(cpu_threads.describe())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    spin, threads, cpus = out.stdout.split("\n")[0].split()
    assert spin == str(cpu_threads.WAIT_SPIN) and threads == cpus
    assert out.stdout.split("\n")[1].startswith(f"threads: {cpus} of {cpus} (affinity {cpus}")


def test_adapt_gives_threads_to_a_busy_neighbour_and_takes_them_back(monkeypatch):
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu_threads, "WATCH", {"cpus": [0, 1], "count": 2, "last": None, "changes": 0})
    machine = {"busy": 100.0, "own": 10.0}
    monkeypatch.setattr(cpu_threads, "_busy_seconds", lambda cpus: machine["busy"])
    monkeypatch.setattr(os, "times", lambda: (machine["own"], 0.0, 0.0, 0.0, 0.0))
    try:
        torch.set_num_threads(2)
        cpu_threads.adapt(now=0.0)  # the first look only records
        machine.update(busy=104.0, own=12.0)  # 2 s: we used 2 CPU-s, others 2 CPU-s = one CPU
        cpu_threads.adapt(now=0.5)  # too soon: no look
        assert torch.get_num_threads() == 2
        cpu_threads.adapt(now=2.0)
        assert torch.get_num_threads() == 1 and cpu_threads.WATCH["changes"] == 1
        machine.update(busy=106.2, own=14.0)  # others 0.2 CPU-s in 2 s: below the threshold, none
        cpu_threads.adapt(now=4.0)
        assert torch.get_num_threads() == 2 and cpu_threads.WATCH["changes"] == 2
    finally:
        torch.set_num_threads(before)


def test_adapt_does_nothing_when_the_user_chose_the_threads(monkeypatch):
    import torch
    monkeypatch.setattr(cpu_threads, "WATCH", {"cpus": None, "last": None, "changes": 0})
    monkeypatch.setattr(cpu_threads, "_busy_seconds", lambda cpus: pytest.fail("looked at /proc/stat"))
    before = torch.get_num_threads()
    cpu_threads.adapt(now=10.0)
    assert torch.get_num_threads() == before


def test_busy_seconds_reads_this_machine():
    cpus = sorted(os.sched_getaffinity(0))
    first = cpu_threads._busy_seconds(cpus)
    x = 0
    for i in range(3_000_000):  # a little work of our own
        x += i
    assert cpu_threads._busy_seconds(cpus) >= first > 0


def test_adapt_counts_only_what_others_take_of_our_share(monkeypatch):
    """8 CPUs in the affinity mask, a quota of 2: others using 5 of them leave our 2 alone; using all 8, they take
    ours too."""
    import torch
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu_threads, "WATCH", {"cpus": list(range(8)), "count": 2, "last": None, "changes": 0})
    machine = {"busy": 0.0, "own": 0.0}
    monkeypatch.setattr(cpu_threads, "_busy_seconds", lambda cpus: machine["busy"])
    monkeypatch.setattr(os, "times", lambda: (machine["own"], 0.0, 0.0, 0.0, 0.0))
    try:
        torch.set_num_threads(2)
        cpu_threads.adapt(now=0.0)
        machine.update(busy=14.0, own=4.0)  # 2 s: others 10 CPU-s = 5 CPUs
        cpu_threads.adapt(now=2.0)
        assert torch.get_num_threads() == 2
        machine.update(busy=32.0, own=6.0)  # 2 s: others 16 CPU-s = 8 CPUs
        cpu_threads.adapt(now=4.0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
