"""Resumable training state, and stopping cleanly when the cluster asks (preemption, time limit).

A resumable checkpoint is a folder save_path/resume/step-000123/ (123 = optimizer updates so far) holding one
state.pt: the unwrapped model, optimizer, scheduler and gradient scaler, the position in training (the epoch
to run and how many of its batches are done), best metric, early-stopping counter, history, and the RNG
states (python, numpy, torch CPU and CUDA) of every rank. Rank 0 writes it into a hidden temporary folder and
renames that into place, so a folder named step-* is always whole; the last KEEP of them are kept. It is read
with torch.load(weights_only=True) only: no pickled code ever runs. A SHA-256 of state.pt is saved beside it;
--resume auto passes over a damaged or half-copied newest checkpoint to the previous one, and says so.

SIGUSR1, SIGTERM or a first Ctrl-C (SIGINT) only raise a flag. The loop looks at it after each optimizer update; the ranks agree on it
(one tiny all-reduce), so all of them stop after the same update, save, and exit with PREEMPTED_EXIT, which
the batch scripts in slurm/ turn into `scontrol requeue`.
"""
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from config import InputError

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later", what a preempted run is
INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
KEEP = 2
STATE_FILE = "state.pt"
HASH_FILE = "state.pt.sha256"  # written before the folder is committed: a damaged or half-copied state is refused
STEP_RE = re.compile(r"^step-(\d+)$")
# Options that may change between a run and its resumption without changing what is computed.
# save_path: the same folder written another way (./run, /abs/run) or moved; the data's SHA-256 guards what it holds.
# seeds, ensemble: a member of --seeds/--cv is the same member when more members or an ensemble are asked for.
MAY_CHANGE = {"resume", "save_every", "log_every", "tensorboard", "num_workers", "device", "parallel",
              "parallel_mode", "boost_cache", "save_path", "seeds", "ensemble"}


@dataclass
class Progress:
    """Where training stands: the epoch to run next, batches of it already done, and what was learnt so far."""
    epoch: int = 1
    batches_done: int = 0
    updates: int = 0
    best: float = None
    best_epoch: int = None
    stale: int = 0
    best_logits: torch.Tensor = None  # validation logits of the best epoch, for calibration and the report
    history: list = field(default_factory=list)
    totals: dict = field(default_factory=lambda: {"samples": 0, "tokens": 0, "seconds": 0.0})


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state(device: torch.device) -> dict:
    """This process's RNG states, as tensors and plain lists (what weights_only loading accepts)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":  # this rank's GPU only: asking for all would open a context on every GPU
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------- save, find, load
def resume_root(save_path: str) -> str:
    return os.path.join(save_path, "resume")


def step_folders(root: str) -> list:
    """Complete checkpoint folders under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := STEP_RE.match(name))
             and os.path.isfile(os.path.join(root, name, STATE_FILE))]
    return [os.path.join(root, name) for _, name in sorted(found)]


def save_resumable(save_path: str, run, model, optimizer, scheduler, scaler, progress: Progress, cfg,
                   average=None) -> None:
    """Write save_path/resume/step-N/ atomically (rank 0) with every rank's RNG state; keep the last KEEP."""
    rngs = [rng_state(run.device)]
    if run.world_size > 1:
        mine, rngs = rngs[0], [None] * run.world_size
        dist.all_gather_object(rngs, mine)
    if run.is_main:
        root = resume_root(save_path)
        os.makedirs(root, exist_ok=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "progress": dataclasses.asdict(progress), "rng": rngs, "world_size": run.world_size,
                 "config": dataclasses.asdict(cfg), "data_sha256": getattr(cfg, "_data_sha256", None)}
        if average is not None:  # --ema's averaged weights
            state["average"] = average.state_dict()
        name = f"step-{progress.updates:06d}"
        tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
        from checkpoint import atomic_path, sha256_file
        try:
            with atomic_path(os.path.join(tmp, STATE_FILE)) as part:
                torch.save(state, part)
            with open(os.path.join(tmp, HASH_FILE), "w", encoding="utf-8") as f:
                f.write(sha256_file(os.path.join(tmp, STATE_FILE)) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half-written step behind
            raise
        final = os.path.join(root, name)
        if os.path.exists(final):  # the same step saved again (end of epoch right after --save_every)
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit: a step-* folder is complete or absent
        for old in step_folders(root)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        for debris in (n for n in os.listdir(root) if n.startswith(".step-")):  # left by a crash mid-write
            shutil.rmtree(os.path.join(root, debris), ignore_errors=True)
    if run.world_size > 1:
        dist.barrier()  # no rank may exit (and get its launcher to kill rank 0) before the save is complete


def find_resumable(resume: str, save_path: str):
    """--resume auto: the newest checkpoint in save_path (None if there is none); else the folder given."""
    if resume == "auto":
        found = step_folders(resume_root(save_path))
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise InputError(f"--resume {resume}: no resumable checkpoint here ({STATE_FILE} is missing); "
                         f"use --resume auto or a folder like {resume_root(save_path)}/step-000100")
    return resume


def read_state(folder: str) -> dict:
    """state.pt of a step folder, after checking it against the hash saved with it; InputError if damaged."""
    from checkpoint import sha256_file
    path = os.path.join(folder, STATE_FILE)
    try:
        with open(os.path.join(folder, HASH_FILE), encoding="utf-8") as f:
            expected = f.read().strip()
    except OSError:
        expected = None  # saved before hashes were written: torch.load's own checks remain
    if expected is not None and sha256_file(path) != expected:
        raise InputError(f"{path}: damaged resumable checkpoint (its SHA-256 does not match the one saved with it)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file must name itself, not end in a traceback
        raise InputError(f"{path}: cannot read the resumable checkpoint ({str(e).splitlines()[0][:200]})")


def newest_readable(save_path: str, run) -> tuple:
    """--resume auto: (folder, state) of the newest step folder that reads back whole, or (None, None) if there
    are none; damaged ones are passed over with a warning, and if every one is damaged the run is refused."""
    folders = step_folders(resume_root(save_path))
    for folder in reversed(folders):
        try:
            return folder, read_state(folder)
        except InputError as e:
            run.print(f"warning: {e}; trying the previous one", file=sys.stderr)
    if folders:
        raise InputError(f"--resume auto: every resumable checkpoint in {resume_root(save_path)} is damaged; "
                         "remove that folder to start afresh")
    return None, None


def load_resumable(folder: str, cfg, run, state: dict = None) -> dict:
    """The saved state, after checking that it belongs to this run's settings and number of processes."""
    state = read_state(folder) if state is None else state
    saved, now = state["config"], dataclasses.asdict(cfg)
    # an option newer than the checkpoint was, in effect, at its default when it was written
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    saved = {**{k: defaults[k] for k in now if k not in saved}, **saved}
    changed = sorted(k for k in now if k not in MAY_CHANGE and saved[k] != now[k])
    if changed:
        raise InputError(f"--resume {folder}: the checkpoint was trained with other settings: "
                         + ", ".join(f"--{k} {saved[k]} (now {now[k]})" for k in changed))
    if None not in (state.get("data_sha256"), getattr(cfg, "_data_sha256", None)) and \
            state["data_sha256"] != cfg._data_sha256:
        raise InputError(f"--resume {folder}: the checkpoint was trained on other rows or classes (--train_path "
                         f"{cfg.train_path}, --valid_path {cfg.valid_path or '(split from --train_path)'} or -d "
                         f"{cfg.dict_path} changed since); resume with the files it started with, or start afresh "
                         "without --resume")
    if state["world_size"] != run.world_size:
        raise InputError(f"--resume {folder}: written by {state['world_size']} process(es), this run has "
                         f"{run.world_size}; resume with the same number so batches and RNG states match")
    return state


def start_or_resume(cfg, run, model, optimizer, scheduler, scaler, average=None) -> Progress:
    """Restore what --resume names into the objects given and this rank's RNG; or start afresh."""
    folder = state = None
    if cfg.resume == "auto":
        folder, state = newest_readable(cfg.save_path, run)
    elif cfg.resume:
        folder = find_resumable(cfg.resume, cfg.save_path)
    if folder is None:
        if run.is_main:  # a fresh series: older step folders would otherwise pass for this run's newest
            shutil.rmtree(resume_root(cfg.save_path), ignore_errors=True)
        return Progress()
    state = load_resumable(folder, cfg, run, state)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if average is not None:
        average.load_state_dict(state["average"])
    set_rng_state(state["rng"][run.rank], run.device)
    progress = Progress(**state["progress"])
    run.print(f"resumed from {folder}: epoch {progress.epoch}, {progress.batches_done} batch(es) of it done, "
              f"{progress.updates} update(s) so far")
    return progress


# ------------------------------------------------------------------------------------------------ preemption
class StopRequest:
    """Set by SIGUSR1/SIGTERM; `agreed(run)` is true on every rank once any rank got the signal."""

    def __init__(self):
        self.signal = None  # the name of the signal this process got
        self.stopping = False  # whether any rank got one, as of the last `agreed`
        self._group = None

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the second Ctrl-C stops at once (KeyboardInterrupt): files stay whole
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.stderr.write("\nCtrl-C: finishing this step and saving a resumable checkpoint "
                             "(Ctrl-C again stops at once)\n")

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGUSR1, SIGTERM and SIGINT while training; put the previous handlers back afterwards."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread may catch signals
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def agreed(self, run) -> bool:
        if run.world_size == 1:
            self.stopping = self.signal is not None
            return self.stopping
        if self._group is None:
            # a CPU (gloo) group: asking every update must not wait for the GPU's queue of work
            self._group = dist.new_group(backend="gloo") if run.device.type == "cuda" else dist.group.WORLD
        flag = torch.tensor([int(self.signal is not None)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)  # ranks get signals at different steps
        self.stopping = bool(flag.item())
        return self.stopping
