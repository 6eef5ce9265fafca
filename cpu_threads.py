"""How many CPU threads this process computes with, and how its OpenMP threads wait: chosen before torch loads.

GNU OpenMP (which PyTorch's CPU build uses) reads OMP_NUM_THREADS, OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when the
library loads, so `configure()` runs at the top of train.py and predict.py, before anything imports torch.

- Threads: the CPUs this process may use, the smallest of its affinity mask (taskset, cgroup cpusets), its cgroup's
  CPU quota (a container given 1.5 CPUs gets 2, rounded up), and SLURM_CPUS_PER_TASK. os.cpu_count() would count
  every CPU of a node that SLURM gave us 4 of. An explicit OMP_NUM_THREADS wins.
- Waiting: at each of the thousands of parallel regions of a step, a thread that finishes its share waits for the
  others. GNU OpenMP spins for a while first (GOMP_SPINCOUNT, 300,000 by default). Alone on the machine spinning
  costs nothing; beside another CPU-bound process the spinning thread takes time slices that the thread it waits
  for needs, and both processes crawl (bench/shared_cpu.py measured a quarter of the idle speed on 2 cores).
  WAIT_SPIN is a short spin (GOMP_SPINCOUNT) that keeps the idle speed. An explicit OMP_WAIT_POLICY or
  GOMP_SPINCOUNT wins.
- Sharing: no spin count is right for both cases (bench/shared_cpu.py: sleeping at once costs a quarter of the
  idle speed; spinning at all collapses beside a busy core), and one thread runs as fast beside a neighbour as
  alone. So `adapt()`, called by the training and prediction loops, looks every ADAPT_EVERY seconds at how much of
  our CPUs other processes used (/proc/stat less our own CPU time, the first look at start-up) and, while they use a
  CPU's worth, computes on one thread fewer per CPU taken; when they stop, it takes the threads back. Not with an
  explicit OMP_NUM_THREADS.
"""
import math
import os
import sys
import time

WAIT_SPIN = 10000  # GOMP_SPINCOUNT chosen with bench/shared_cpu.py (bench/README.md)
ADAPT_EVERY = 1.0  # seconds between two looks at what other processes use (a look reads /proc/stat: ~50 us)
STALE_AFTER = 60.0  # a look older than this (a second run in one Python process) is only a new first look
OTHERS_THRESHOLD = 0.3  # CPUs used by other processes below which they count as none (daemons, our own loader)
CHOICE = {}  # what configure() chose and why, for the start-up block
WATCH = {"cpus": None, "last": None, "changes": 0}  # adapt()'s state: our CPUs, the last look, thread changes


def _cgroup_quota():
    """CPUs allowed by the cgroup's CFS quota (v2 cpu.max or v1 cfs_quota_us), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def usable_cpus(environ=os.environ) -> tuple:
    """(count, why): the CPUs this process may compute on, and which limit set the count."""
    limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
    quota = _cgroup_quota()
    if quota is not None:
        limits["cgroup CPU quota"] = quota
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits["SLURM_CPUS_PER_TASK"] = int(slurm)
    why = min(limits, key=limits.get)
    return limits[why], why


def configure(environ=os.environ) -> dict:
    """Set OMP_NUM_THREADS and GOMP_SPINCOUNT in `environ` unless the user set them (or torch is already loaded,
    when it is too late); returns (and keeps in CHOICE) what was chosen, for the start-up block."""
    if environ is os.environ and CHOICE:  # chosen already: a second entry point loaded into this process (train.py's
        return CHOICE                     # --teacher imports predict.py) keeps the first choice and its description
    late = "torch" in sys.modules
    count, why = usable_cpus(environ)
    if "OMP_NUM_THREADS" in environ:
        threads = f"{environ['OMP_NUM_THREADS']} (OMP_NUM_THREADS)"
    else:
        threads = f"{count} ({why} {count}; fewer while other processes use them)"
        # every CPU we may run on: with a quota or SLURM below the affinity mask, others' use counts only beyond
        # the CPUs we leave to them anyway
        WATCH["cpus"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        WATCH["count"] = count
        adapt()  # the first look: the first training step then knows what others did during start-up
        if not late:
            environ["OMP_NUM_THREADS"] = str(count)
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        wait = ", ".join(f"{k}={environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in environ)
    elif late:
        wait = "OpenMP's default (torch was loaded first)"
    else:
        environ["GOMP_SPINCOUNT"] = str(WAIT_SPIN)
        wait = f"spin {WAIT_SPIN} then sleep"
    CHOICE.update({"threads": threads, "wait": wait})
    return CHOICE


def describe() -> str:
    """One line for the start-up block."""
    import torch
    return (f"threads: {torch.get_num_threads()} of {CHOICE.get('threads', 'torch default')}, "
            f"OpenMP waiting: {CHOICE.get('wait', 'default')}")


def _busy_seconds(cpus: list) -> float:
    """CPU seconds the machine has spent busy on `cpus` since boot (/proc/stat, every process)."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:  # user nice system idle iowait irq softirq steal
                ticks = [int(x) for x in fields[1:9]]
                busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def adapt(now: float = None) -> None:
    """Every ADAPT_EVERY seconds: one thread fewer for each CPU that other processes kept busy since the last look,
    all of them back when they stop. Cheap between looks (one clock read); a no-op when the user chose the threads,
    or where /proc/stat is missing."""
    if WATCH["cpus"] is None:
        return
    now = time.monotonic() if now is None else now
    last = WATCH["last"]
    if last is not None and now - last[0] < ADAPT_EVERY:
        return
    try:
        busy, own = _busy_seconds(WATCH["cpus"]), sum(os.times()[:2])
    except (OSError, ValueError):
        WATCH["cpus"] = None
        return
    WATCH["last"] = (now, busy, own)
    if last is None or "torch" not in sys.modules or now - last[0] > STALE_AFTER:  # a first look
        return
    others = max(0.0, (busy - last[1]) - (own - last[2])) / (now - last[0])
    count = WATCH["count"]
    taken = others - (len(WATCH["cpus"]) - count) - OTHERS_THRESHOLD  # CPUs of our count that others use
    want = count if taken < 0 else max(1, count - math.ceil(taken))
    import torch
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
        WATCH["changes"] += 1
