"""Where and how this process computes: its device, precision and process group, and starting local workers.

`setup_run` is the one place that reads torchrun's RANK, LOCAL_RANK and WORLD_SIZE: it joins the process group
(gloo on CPU, nccl on CUDA) or falls back to one process, and returns a `Run` that the rest of the code asks for
its device, precision and rank. `-p True` on a machine with several GPUs starts one worker per GPU itself
(`launch_local_workers`, what `torchrun --standalone` would do). Rank 0 alone prints (`Run.print`).
"""
import contextlib
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from config import InputError


@dataclass
class Run:
    """Where and how this process computes: device, precision, its rank among `world_size` processes."""
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def autocast(self):
        if self.precision in ("fp32", "int8"):  # int8: an ONNX graph, which autocast does not reach
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPUs on which bf16 autocast is faster than fp32, not slower."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


def pick_precision(name: str, device: torch.device) -> str:
    """auto: bf16 on Ampere+ GPUs and bf16-capable CPUs, fp16 on older GPUs, fp32 elsewhere."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if name == "auto":
            return "bf16" if bf16_ok else "fp16"
        if name == "bf16" and not bf16_ok:
            raise InputError("--precision bf16: this GPU has no bf16 support (use fp16 or auto)")
        return name
    if name == "fp16":
        raise InputError("--precision fp16: only for CUDA GPUs (on CPU use bf16 or fp32)")
    if name == "int8" and device.type != "cpu":
        raise InputError("--precision int8: the int8 ONNX graph runs on the CPU (use --device cpu)")
    if name == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    return name


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every block over 32 MB (BERT's 30,522 x 384 word-embedding gradient is 47 MB) with
    its own mmap and unmaps it when freed, so the next step's block of the same size page-faults in again, zero
    page by zero page: 11% of a CPU training step here. Off mmap and with trimming off, freed blocks stay in the
    heap and are reused. Returns whether the setting took (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def setup_run(device_name: str, precision: str) -> Run:
    """Join the process group when launched by torchrun (RANK/LOCAL_RANK/WORLD_SIZE), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cpu" and world_size > 1:
        # ranks share the machine's cores; oversubscribing them makes every rank slower
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return Run(device, pick_precision(precision, device), rank, local_rank, world_size)


def cleanup_run() -> None:
    """Leave the process group together: a gloo rank that tears down while a peer still talks to it can abort
    ("terminate called without an active exception") and fail the whole launch."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_worker_count(parallel: bool, device_name: str) -> int:
    """Workers that `-p True` starts itself: one per GPU on a machine with several, unless torchrun started us."""
    if not parallel or "WORLD_SIZE" in os.environ or device_name not in ("auto", "cuda"):
        return 0
    gpus = torch.cuda.device_count()
    return gpus if gpus > 1 else 0


def launch_local_workers(script: str, argv: list, nproc: int, saves_on_signal: bool = False) -> int:
    """Run `script argv` in nproc processes as `torchrun --standalone` would; their exit code. Stopped by a
    signal: 130 for Ctrl-C; for SIGTERM/SIGUSR1, 75 (preempted) where the workers saved a resumable checkpoint
    (`saves_on_signal`: train.py), else 128 + the signal (predict.py saves nothing to resume from)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from resume import PREEMPTED_EXIT
    # the launcher passes these on to the workers, which then save a resumable checkpoint and exit
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=f"local-{os.getpid()}", max_restarts=0,
                          signals_to_handle="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    try:
        elastic_launch(config, sys.executable)("-u", script, *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return PREEMPTED_EXIT if PREEMPTED_EXIT in codes else max(codes)
    except SignalException as e:  # the workers got the signal too (train.py's saved before exiting)
        if e.sigval == signal.SIGINT:
            return 130
        return PREEMPTED_EXIT if saves_on_signal else 128 + int(e.sigval)
    return 0


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model

