"""train.py's speed on a CPU it shares: idle, beside a busy loop on one core, beside a second train.py, in one run.

    python bench/shared_cpu.py                      # train.py's own thread and wait-policy choice, and the others
    python bench/shared_cpu.py --policies auto --rows 1000

Each contender is the whole `train.py` command (1 epoch on the first --rows rows of data/train.csv, validation on
--valid_rows rows of data/dev.csv, the embedded checkpoint, defaults otherwise), and its figure is the training
throughput train.py prints at the end (`throughput N samples/s`: the epochs' own timer). Scenarios:
  idle       alone on the machine
  busy core  beside `python -c "while True: pass"`, one CPU-bound thread that the scheduler places where it likes
  train.py   two identical train.py runs at once (the figure is their mean)
and the ratio of each to idle, measured in the same run. Policies (the environment each run starts with):
  auto       nothing set: train.py chooses its threads and OpenMP wait policy itself (runtime.choose_threads)
  spin       OMP_NUM_THREADS = the CPUs, OMP_WAIT_POLICY=ACTIVE: threads spin at every barrier (the old behaviour
             on a busy machine, where GNU OpenMP's default spin-then-sleep is near to spinning)
  default    OMP_NUM_THREADS = the CPUs and GOMP_SPINCOUNT=300000, GNU OpenMP's own default spin count: what PyTorch
             does when nobody chooses
  passive    OMP_NUM_THREADS = the CPUs, OMP_WAIT_POLICY=PASSIVE: waiting threads sleep at once
  one        OMP_NUM_THREADS=1
The ideal beside one busy core, on 2 cores, is 50% of idle (half of the machine is taken).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, print_table, write_slice

POLICIES = ("auto", "spin", "default", "passive", "one")
EXTRA = {"spin1k": "1000", "spin10k": "10000", "spin100k": "100000"}  # --policies spinNk: GOMP_SPINCOUNT=N000


def policy_env(policy: str, cpus: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"spin": {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "ACTIVE"},
                "default": {"OMP_NUM_THREADS": str(cpus), "GOMP_SPINCOUNT": "300000"},
                "passive": {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"},
                "one": {"OMP_NUM_THREADS": "1"}, "auto": {},
                **{k: {"OMP_NUM_THREADS": str(cpus), "GOMP_SPINCOUNT": v} for k, v in EXTRA.items()}}[policy])
    return env


def start_train(args, env: dict, name: str) -> subprocess.Popen:
    save = os.path.join(args.workdir, name)
    log = open(os.path.join(args.workdir, f"{name}.log"), "w")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "-d", os.path.join(ROOT, "classes.json"),
                             "-p", "False", "--train_path", args.train, "--valid_path", args.valid, "--n_epochs", "1",
                             "--save_path", save, "--tensorboard", "False"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def throughput(args, name: str, proc: subprocess.Popen) -> tuple:
    """(samples/s, the start-up line about threads) of a finished train.py run."""
    code = proc.wait()
    with open(os.path.join(args.workdir, f"{name}.log")) as f:
        text = f.read()
    found = re.search(r"throughput ([\d.]+) samples/s", text)
    if code != 0 or not found:
        raise SystemExit(f"{name}: train.py exited {code}; end of its log:\n{text[-1500:]}")
    threads = re.search(r"^threads: .*$", text, re.M)
    return float(found.group(1)), threads.group(0) if threads else ""


def scenario(args, policy: str, where: str, cpus: int) -> tuple:
    env = policy_env(policy, cpus)
    neighbour = None
    if where == "busy core":
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1)
    runs = [(f"{policy}_{where.replace(' ', '_')}_{i}", None) for i in range(2 if where == "train.py" else 1)]
    runs = [(name, start_train(args, env, name)) for name, _ in runs]
    results = [throughput(args, name, proc) for name, proc in runs]
    if neighbour is not None:
        neighbour.kill()
        neighbour.wait()
    speed = sum(r[0] for r in results) / len(results)
    print(f"  {policy:8s} {where:10s} {speed:7.1f} samples/s  (load {load_average()})  {results[0][1]}",
          file=sys.stderr, flush=True)
    return speed, results[0][1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="training rows (first rows of data/train.csv)")
    p.add_argument("--valid_rows", type=int, default=500)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--repeats", type=int, default=1, help="rounds over the policies (idle figures: the median)")
    p.add_argument("--idle_only", action="store_true", help="only the idle scenario (to compare idle speeds)")
    p.add_argument("--workdir", default="")
    args = p.parse_args(argv)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_shared_")
    args.train, args.valid = (os.path.join(args.workdir, f) for f in ("train.csv", "valid.csv"))
    write_slice(os.path.join(ROOT, "data", "train.csv"), args.train, 0, args.rows)
    write_slice(os.path.join(ROOT, "data", "dev.csv"), args.valid, 0, args.valid_rows)
    cpus = len(os.sched_getaffinity(0))
    print(f"shared_cpu: {args.rows} rows, 1 epoch, {cpus} CPUs; workdir {args.workdir}; load {load_average()}",
          flush=True)
    policies = args.policies.split(",")
    scenarios = ("idle",) if args.idle_only else ("idle", "busy core", "train.py")
    seen = {(p, s): [] for p in policies for s in scenarios}
    threads = {}
    for _ in range(args.repeats):  # rounds, so that a slow minute of the machine does not land on one policy
        for policy in policies:
            for where in scenarios:
                speed, threads[policy] = scenario(args, policy, where, cpus)
                seen[policy, where].append(speed)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    rows = []
    for policy in policies:
        idle = median(seen[policy, "idle"])
        row = [policy, " / ".join(f"{x:.1f}" for x in seen[policy, "idle"])]
        for where in scenarios[1:]:
            speed = median(seen[policy, where])
            row += [f"{speed:.1f}", f"{100 * speed / idle:.0f}%"]
        rows.append(row + [threads[policy].replace("threads: ", "")])
    header = ["policy", "idle samples/s (each round)"]
    header += [] if args.idle_only else ["beside a busy core", "of idle", "beside train.py (each)", "of idle"]
    print_table(header + ["threads and waiting"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
