"""Run logs: save_path/logs/log.csv, TensorBoard event files of the same scalars, and the progress of each epoch.

log.csv has fixed columns (COLUMNS): a `step` row every --log_every optimizer updates of the run (mean training
loss since the previous row, learning rate, samples/s) and an `epoch` row after each validation (the epoch's mean
training loss and the validation metrics). It is small, so it is rewritten whole through a temporary file and a
rename each time a row is added: never half-written. --resume keeps the rows up to the resumed update and goes on
from there; a fresh run starts both files afresh. With the tensorboard package installed (and --tensorboard True),
the same scalars go to TensorBoard event files in the same folder. Rank 0 alone writes.

On a terminal an epoch's progress is tqdm's bar, redrawn in place. Anywhere else (a SLURM log, a pipe) a bar
would leave one copy per redraw, so it becomes one plain line per --log_every updates, with an ETA for the epoch.
"""
import contextlib
import csv
import glob
import io
import os
import sys
import time

from tqdm import tqdm

from checkpoint import write_atomic, writing
from config import METRICS

LOGS = "logs"
LOG_FILE = "log.csv"
EVENTS = "events.out.tfevents.*"  # the names TensorBoard's writers give their files
COLUMNS = ("kind", "epoch", "step", "train_loss", "learning_rate", "samples_per_s",
           *(f"valid_{m}" for m in METRICS))


def on_terminal() -> bool:
    """Whether tqdm's stream, stderr, is a terminal (where a bar redraws in place)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def duration(seconds: float) -> str:
    """2m10s, 1h05m, 45s."""
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RunLog:
    """save_path/logs/ of one run (a no-op on ranks other than 0). A context: TensorBoard's file is closed on
    errors too. `resumed_at`: the update a --resume continues from (None: a fresh run)."""

    def __init__(self, save_path: str, run, tensorboard: bool, resumed_at: int = None, resumed_epoch: int = 1):
        self.folder = os.path.join(save_path, LOGS)
        self.path = os.path.join(self.folder, LOG_FILE)
        self.run, self.rows, self.writer = run, [], None
        if not run.is_main:
            return
        with writing(self.folder):
            os.makedirs(self.folder, exist_ok=True)
            for debris in glob.glob(os.path.join(self.folder, f".{LOG_FILE}.*.tmp")):  # a killed run's
                os.remove(debris)
            if resumed_at is None:
                for old in glob.glob(os.path.join(self.folder, EVENTS)):  # another run's curves
                    os.remove(old)
            else:
                self.rows = kept_rows(self.path, resumed_at, resumed_epoch)
            self._write()
            if tensorboard:
                self.writer = open_tensorboard(self.folder, None if resumed_at is None else resumed_at + 1, run)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if self.writer is not None:
            writer, self.writer = self.writer, None
            if exc_type is not None:  # the error on its way out is the one to report
                with contextlib.suppress(Exception):
                    writer.close()
            else:
                with writing(self.folder):
                    writer.close()
        return False

    def step_row(self, epoch: int, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.add({"kind": "step", "epoch": epoch, "step": step, "train_loss": loss, "learning_rate": lr,
                  "samples_per_s": samples_per_s},
                 {"train/loss": loss, "train/learning_rate": lr, "train/samples_per_s": samples_per_s})

    def epoch_row(self, record: dict, step: int, lr: float) -> None:
        """An epoch's record (train.score_epoch) at `step`, the updates of the run so far."""
        valid = {k: record[k] for k in COLUMNS if k.startswith("valid_") and k in record}
        self.add({"kind": "epoch", "epoch": record["epoch"], "step": step, "train_loss": record["train_loss"],
                  "learning_rate": lr, "samples_per_s": record["train_samples_per_s"], **valid},
                 {f"valid/{k[len('valid_'):]}": v for k, v in valid.items()})

    def add(self, row: dict, scalars: dict) -> None:
        """One row of log.csv (the file rewritten whole) and its scalars in TensorBoard, at row["step"]."""
        if not self.run.is_main:
            return
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in row.items()})
        with writing(self.path):
            self._write()
        if self.writer is not None:
            with writing(self.folder):
                for tag, value in scalars.items():
                    self.writer.add_scalar(tag, value, row["step"])
                self.writer.flush()  # here, not in TensorBoard's thread, so that a write error is one line

    def _write(self) -> None:
        text = io.StringIO()
        table = csv.DictWriter(text, COLUMNS, lineterminator="\n")
        table.writeheader()
        table.writerows(self.rows)
        write_atomic(self.path, text.getvalue().encode("utf-8"))


def kept_rows(path: str, updates: int, epoch: int) -> list:
    """The rows of an earlier log.csv that a run resumed after `updates` updates, in `epoch`, keeps: step rows up
    to that update, epoch rows of the epochs before. Rows that do not parse are dropped."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # none yet (a run from before logs existed), or unreadable: the log starts here
    kept = []
    for row in rows:
        try:
            keep = int(row["step"]) <= updates if row["kind"] == "step" else \
                row["kind"] == "epoch" and int(row["epoch"]) < epoch
        except (KeyError, TypeError, ValueError):
            continue
        if keep:
            kept.append({k: row.get(k) or "" for k in COLUMNS})
    return kept


def open_tensorboard(folder: str, purge_step, run):
    """A SummaryWriter into `folder`, or None (said once) without the tensorboard package. `purge_step`: on
    resume, TensorBoard drops the earlier files' events from this step on, as log.csv drops its rows."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        run.print("--tensorboard True: the tensorboard package is not installed, so save_path/logs/ has log.csv "
                  "only (pip install tensorboard)")
        return None
    # flushed by RunLog.add itself: a write error there is an exception in this thread, not a traceback in its own
    return SummaryWriter(folder, purge_step=purge_step, flush_secs=10 ** 6)


class EpochLog:
    """What engine.train_one_epoch reports, and when: every `every`-th optimizer update of the run (counted from
    `first_update`, the run's updates before this call) tqdm's postfix on a terminal, else a plain line, and a
    log.csv row through `files` (a RunLog). `epoch_updates`: (updates of this epoch before this call, in all)."""

    def __init__(self, run, every: int, desc: str = "", epoch: int = 0, first_update: int = 0,
                 epoch_updates: tuple = (0, None), files: RunLog = None):
        self.run, self.every, self.desc, self.epoch, self.first_update = run, every, desc, epoch, first_update
        self.updates_before, self.updates_in_epoch = epoch_updates
        self.files, self.bar = files, None

    @contextlib.contextmanager
    def opened(self, micro_steps: int):
        """The epoch's bar (rank 0, on a terminal), closed on errors too so that an error starts a line of its own."""
        self.started, self.loss_seen, self.steps_seen = time.perf_counter(), 0.0, 0
        self.bar = tqdm(total=micro_steps, desc=self.desc, dynamic_ncols=True, leave=False) \
            if self.run.is_main and on_terminal() else None
        try:
            yield self
        finally:
            if self.bar is not None:
                self.bar.close()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def due(self, updates: int) -> bool:
        """Whether the `updates`-th update of this call is one of the run's every --log_every."""
        return (self.first_update + updates) % self.every == 0

    def record(self, updates: int, micro_steps: int, loss_sum: float, samples: float, lr: float) -> None:
        """At a logging step (rank 0): the bar's numbers; on a due update, a row and, off a terminal, a line."""
        elapsed = time.perf_counter() - self.started
        rate = samples / max(elapsed, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss_sum / micro_steps:.4f}", samples_s=f"{rate:.1f}")
        if not self.due(updates):  # the epoch's last step: its epoch row follows
            return
        loss = (loss_sum - self.loss_seen) / max(1, micro_steps - self.steps_seen)  # since the previous row
        self.loss_seen, self.steps_seen = loss_sum, micro_steps
        if self.bar is None:
            done, total = self.updates_before + updates, self.updates_in_epoch
            eta = f"  ETA {duration((total - done) * elapsed / updates)}" if total else ""
            self.run.print(f"{self.desc}  step {done}/{total or '?'}  loss {loss:.4f}  lr {lr:.1e}  "
                           f"{rate:.1f} samples/s{eta}")
        if self.files is not None:
            self.files.step_row(self.epoch, self.first_update + updates, loss, lr, rate)
