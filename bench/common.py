"""What the bench scripts share: the data slices, one contender per subprocess, the matmul peak, the table.

Each contender runs in its own Python process, so its peak resident memory is its own and no state (threads,
autocast caches, allocator) leaks from one contender into the next. The child writes a JSON result file; the
parent reads them all and prints one table, with ratios computed from numbers taken in the same run.
"""
import csv
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_slice(src: str, dst: str, start: int, rows: int) -> int:
    """Copy data rows [start, start + rows) of a CSV (header kept) to dst; returns the number copied."""
    with open(src, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        kept = [r for i, r in enumerate(reader) if start <= i < start + rows]
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
    return len(kept)


def read_column(path: str, column: str) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    VmHWM belongs to this process's own address space; getrusage's ru_maxrss survives fork and exec on Linux,
    so a child would report its parent's peak when the parent was bigger.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_child(script: str, variant: str, workdir: str, extra: list, python: str = sys.executable) -> dict:
    """Run `script --variant variant` in a fresh interpreter (`python`, this one by default); its output goes to
    workdir/variant.log."""
    log = os.path.join(workdir, f"{variant}.log")
    result = os.path.join(workdir, f"{variant}.json")
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([python, script, "--variant", variant, "--workdir", workdir, *extra],
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0 or not os.path.exists(result):
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"{variant} failed (exit {code}); end of {log}:\n{tail}")
    with open(result) as f:
        out = json.load(f)
    out["wall_s"] = time.perf_counter() - started
    print(f"  {variant}: done in {out['wall_s']:.0f}s (load {load_average()})", file=sys.stderr, flush=True)
    return out


def timed_pipeline(pipe, texts: list, names: list) -> tuple:
    """(probabilities in the class order of `names`, wall seconds, CPU seconds) of a transformers text-classification
    pipeline (top_k=None) over `texts`. Used by bench/optimum_child.py too, which imports nothing of the project."""
    import numpy as np
    started, cpu_started = time.perf_counter(), time.process_time()
    outputs = pipe(texts)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    probs = np.zeros((len(texts), len(names)), dtype=np.float32)
    for row, scores in enumerate(outputs):
        for s in scores:
            probs[row, names.index(s["label"])] = s["score"]
    return probs, seconds, cpu_seconds


def save_result(workdir: str, variant: str, result: dict) -> None:
    result["peak_rss_mb"] = peak_rss_mb()
    with open(os.path.join(workdir, f"{variant}.json"), "w") as f:
        json.dump(result, f, indent=2)


def set_threads(threads: int) -> int:
    """Use `threads` CPU threads in this process (0 = PyTorch's default, one per core); returns the count."""
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def matmul_peak_gflops(dtype_name: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n x n matmul in this dtype on this machine, over about `seconds`."""
    import torch
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # first call picks kernels (oneDNN / AMX tiles)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def print_table(header: list, rows: list) -> None:
    """A Markdown table, so that it can be pasted as it is into bench/README.md."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in cells[1:]:
        print(line(r))


def train_best_epoch(argv: list, save_path: str) -> tuple:
    """(the best epoch's record from metrics.json, wall seconds) of train.main(argv) run in this process."""
    import train
    started = time.perf_counter()
    try:
        train.main(argv)
    except SystemExit as e:
        if e.code:
            raise
    seconds = time.perf_counter() - started
    with open(os.path.join(save_path, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return metrics["epochs"][metrics["best_epoch"] - 1], seconds
