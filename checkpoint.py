"""Crash-safe files: atomic writes, and a model folder that is always whole and checked before it is used.

A model folder holds model.safetensors (weights of the unwrapped classifier), config.json (the encoder's
architecture), the tokenizer's files, train_config.json, classes.json, calibration.json and manifest.json,
which records the SHA-256 of every other file. Saving is a small write-ahead journal: each new file is
written beside its final name as NAME.tmp, then the new manifest is renamed into place (the commit), then each
NAME.tmp is renamed to NAME. A crash before the commit leaves the old model as it was; a crash after it is
rolled forward by the next load, which finds the NAME.tmp files that match the manifest. Weights are read
with safetensors only and configs are JSON: no pickle, no code from the checkpoint ever runs.

A failed write (disk full, quota, read-only file system, permission) is one RunFault line naming the file
(`writing`); the staging files are removed and the last committed model stays as it was. `FolderLock` keeps a
second train.py out of a save_path that a run is writing.
"""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from config import InputError, RunFault, os_problem

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
# Formats that torch.load or pickle would read, i.e. that can run code: a model folder holding one is refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
STAGING_PREFIX = ".staging-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def writing(target: str):
    """Turn a failure to write under `target` into one RunFault line naming the file and the error. torch.save and
    safetensors report the OS error in their own exception types; OSError names its file itself."""
    try:
        yield
    except OSError as e:
        raise RunFault(f"{e.filename or target}: cannot write ({e.strerror or e})")
    except (RuntimeError, SafetensorError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        if "unexpected pos" in reason:  # torch.save's zip writer wrote less than it asked for: a full disk, as a rule
            reason = f"the disk is probably full: {reason}"
        raise RunFault(f"{target}: cannot write ({reason})")


def model_in_place(folder: str) -> str:
    """What a user still has after a failed run: a complete model in `folder`, or none yet."""
    try:
        verify_folder(folder)
    except InputError:
        return f"no complete model in {folder} yet"
    return f"the last complete model in {folder} is in place and loads (predict.py reads it)"


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it vanishes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_atomic(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _roll_forward(folder: str, manifest: dict) -> None:
    """Finish a save that was interrupted after its commit: rename each NAME.tmp that the manifest expects."""
    for name, digest in manifest["files"].items():
        path = os.path.join(folder, name)
        pending = path + ".tmp"
        if os.path.exists(pending) and sha256_file(pending) == digest:
            os.replace(pending, path)
    _fsync_dir(folder)


def commit_files(folder: str, staged: dict, replace: bool = False) -> None:
    """Move staged files {name: temporary path} into `folder` as one all-or-nothing change (see module doc).
    `replace`: the staged files are the folder's whole content; the files only the previous manifest listed leave
    it at the commit and are deleted after it (a model put in place of an ensemble, or the other way round)."""
    os.makedirs(folder, exist_ok=True)
    manifest_path = os.path.join(folder, MANIFEST)
    files = {}
    if os.path.exists(manifest_path):
        with contextlib.suppress(OSError, ValueError):
            manifest = _read_manifest(folder)
            # Staging below overwrites NAME.tmp files: a committed save still waiting in them must land first,
            # or a second crash would leave a manifest that matches nothing.
            _roll_forward(folder, manifest)
            files = {k: v for k, v in manifest["files"].items()
                     if k not in staged and os.path.exists(os.path.join(folder, k))}
    gone, files = (list(files), {}) if replace else ([], files)
    for name, src in staged.items():
        pending = os.path.join(folder, name + ".tmp")
        os.makedirs(os.path.dirname(pending), exist_ok=True)
        if os.path.abspath(src) != os.path.abspath(pending):
            shutil.move(src, pending)
        with open(pending, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = sha256_file(pending)
    write_json(manifest_path, {"format": FORMAT_VERSION, "files": files})  # the commit point
    for name in staged:
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
    for name in gone:  # no longer part of the model: a crash before this leaves them unlisted, never read
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
            if os.path.dirname(name):
                os.rmdir(os.path.join(folder, os.path.dirname(name)))  # only if empty
    _fsync_dir(folder)


def _read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("no 'files' object")
    for name in manifest["files"]:
        # names come from disk: one that leaves the folder would let a crafted manifest rename files elsewhere
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
            raise ValueError(f"file name {name!r} points outside the model folder")
    return manifest


def verify_folder(folder: str) -> dict:
    """Check every file against the manifest (rolling an interrupted save forward); return the manifest."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: no trained model here (the folder does not exist); run train.py first "
                         "or pass --save_path")
    if not os.path.exists(os.path.join(folder, MANIFEST)):
        if os.path.exists(os.path.join(folder, LOCK_FILE)):
            raise InputError(f"{folder}: a training run is writing this folder and has saved no complete model "
                             f"yet; wait for its first epoch ({os.path.join(folder, LOCK_FILE)} names it)")
        raise InputError(f"{folder}: no trained model here ({MANIFEST} is missing); run train.py first "
                         "or pass --save_path")
    try:
        manifest = _read_manifest(folder)
    except (OSError, ValueError) as e:
        raise InputError(f"{os.path.join(folder, MANIFEST)}: unreadable manifest ({e})")
    for root, dirs, names in os.walk(folder):
        # leftovers of a killed save; resume/, train.py's resumable states, read with weights_only=True only; and
        # members/ (--seeds, --cv): model folders of their own, each checked when it is loaded
        dirs[:] = [d for d in dirs if not d.startswith(STAGING_PREFIX)
                   and not (root == folder and d in ("resume", "members"))]
        for name in names:
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise InputError(f"{os.path.join(root, name)}: pickle-based file in the model folder; such files "
                                 "can run code when loaded and are never read here: remove it to load this model")
    _roll_forward(folder, manifest)
    for name, digest in manifest["files"].items():
        path = os.path.join(folder, name)
        if os.path.exists(path) and sha256_file(path) == digest:
            continue
        state = "is missing" if not os.path.exists(path) else "does not match the hash recorded when it was saved"
        raise InputError(f"{path}: {state}; the model folder was changed or damaged, refusing to load it")
    return manifest


@contextlib.contextmanager
def staging(folder: str):
    """A staging folder inside `folder` for files on their way to commit_files; removed afterwards (one left by a
    killed process, by the next save)."""
    with writing(folder):
        os.makedirs(folder, exist_ok=True)
        _remove_dead_staging(folder)
        stage = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def stage_json(stage: str, name: str, obj) -> str:
    """Write `obj` as indented JSON to stage/name, as a model folder's settings files are written; its path."""
    path = os.path.join(stage, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    return path


def save_model(folder: str, model: torch.nn.Module, tokenizer, cfg, names: list, extra: dict) -> None:
    """Write the whole model folder atomically: weights, architecture, tokenizer, configs, label map. Any failed
    write, not only the weights', is one RunFault line naming its file; the staging folder goes either way."""
    import dataclasses
    with staging(folder) as stage:
        with writing(os.path.join(folder, WEIGHTS)):
            st_save_model(model, os.path.join(stage, WEIGHTS))
        with writing(folder):
            model.encoder.config.save_pretrained(stage)
            tok_dir = os.path.join(stage, "tokenizer")
            tokenizer.save_pretrained(tok_dir)
            staged = {WEIGHTS: os.path.join(stage, WEIGHTS), "config.json": os.path.join(stage, "config.json")}
            for name in sorted(os.listdir(tok_dir)):
                staged[f"tokenizer/{name}"] = os.path.join(tok_dir, name)
            settings = [("train_config.json", dataclasses.asdict(cfg)),
                        ("classes.json", {n: i for i, n in enumerate(names)}), ("calibration.json", extra)]
            if getattr(model, "read_out", None) is not None:  # --label_groups: the head's classes and their groups
                from label_groups import FOLDER_FILE
                settings.append((FOLDER_FILE, model.read_out.label_groups.spec()))
            for name, obj in settings:
                staged[name] = stage_json(stage, name, obj)
            commit_files(folder, staged, replace=True)  # the whole model: nothing of an earlier one stays listed


def commit_copy(folder: str, copies: dict, objects: dict = None) -> None:
    """Make `copies` {name: file to copy} and `objects` {name: JSON-able object} the whole committed content of
    `folder` (commit_files with replace): a model copied into place, or an ensemble's settings."""
    with staging(folder) as stage, writing(folder):
        staged = {}
        for name, src in copies.items():
            staged[name] = os.path.join(stage, name)
            os.makedirs(os.path.dirname(staged[name]), exist_ok=True)
            shutil.copyfile(src, staged[name])
        for name, obj in (objects or {}).items():
            staged[name] = stage_json(stage, name, obj)
        commit_files(folder, staged, replace=True)


def replace_folder(stage: str, out: str) -> None:
    """Put the folder `stage` in place of `out` (an earlier one, or nothing) by renames: never half of it there."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old.", dir=os.path.dirname(out))
        os.rmdir(old)
        os.rename(out, old)
    os.rename(stage, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _remove_dead_staging(folder: str) -> None:
    """Delete staging folders left by saves whose process was killed (their pid is gone)."""
    for name in os.listdir(folder):
        if not name.startswith(STAGING_PREFIX):
            continue
        pid = name[len(STAGING_PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return True


def listed_in_manifest(folder: str, name: str) -> bool:
    """Whether `name` is in `folder` and part of its committed content: listed by its manifest (a file a later
    commit no longer lists does not count), or, in a folder without one (an export), present."""
    if not os.path.isfile(os.path.join(folder, name)):
        return False
    if not os.path.exists(os.path.join(folder, MANIFEST)):
        return True
    try:
        return name in _read_manifest(folder)["files"]
    except (OSError, ValueError):
        return False


def read_label_groups(folder: str):
    """The label_groups.LabelGroups a model, ensemble or export folder was trained with (--label_groups), or None."""
    from label_groups import FOLDER_FILE, LabelGroups
    if not listed_in_manifest(folder, FOLDER_FILE):
        return None
    path = os.path.join(folder, FOLDER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        return LabelGroups(list(spec["classes"]), dict(spec["groups"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable ({str(e)[:200]})")


def read_settings(folder: str) -> tuple:
    """(cfg, names, extra) of a model or ensemble folder: train_config.json, classes.json and calibration.json,
    after checking every file against the manifest."""
    from config import load_config
    from dataset import load_label_map
    verify_folder(folder)
    cfg = load_config(os.path.join(folder, "train_config.json"))
    names = load_label_map(os.path.join(folder, "classes.json"))
    with open(os.path.join(folder, "calibration.json"), encoding="utf-8") as f:
        extra = json.load(f)
    return cfg, names, extra


def load_model(folder: str, device: torch.device):
    """Rebuild (model, tokenizer, cfg, names, extra) from a model folder, after checking its files."""
    from transformers import AutoTokenizer

    from model import BertClassifier, encoder_from_config
    cfg, names, extra = read_settings(folder)
    try:
        encoder = encoder_from_config(folder)
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: cannot rebuild the encoder or tokenizer ({str(e).splitlines()[0]})")
    groups = read_label_groups(folder)
    if groups is not None and groups.names != names:
        raise InputError(f"{folder}: the groups of label_groups.json are not the classes of classes.json")
    model = BertClassifier(encoder, len(groups.classes if groups else names), cfg.pooling, cfg.dropout_p,
                           cfg.window_pool)
    try:
        missing, unexpected = st_load_model(model, os.path.join(folder, WEIGHTS), strict=False)
    except SafetensorError as e:
        raise InputError(f"{os.path.join(folder, WEIGHTS)}: not a valid safetensors file ({e}); "
                         "weights are only read as safetensors, never unpickled")
    except (RuntimeError, ValueError, OSError) as e:
        raise InputError(f"{os.path.join(folder, WEIGHTS)}: weights do not fit the saved architecture "
                         f"({str(e).splitlines()[0][:300]})")
    if missing or unexpected:
        raise InputError(f"{os.path.join(folder, WEIGHTS)}: weights do not fit the saved architecture "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if groups is not None:
        from label_groups import GroupReadOut
        model.read_out = GroupReadOut(groups, cfg.multi_label)
    return model.to(device).eval(), tokenizer, cfg, names, extra


# --------------------------------------------------------------------------------------------------- the lock
LOCK_FILE = "train.lock"
HEARTBEAT_S = 60  # the holder touches the lock this often
STALE_AFTER_S = 600  # a lock untouched this long belongs to a run that is gone, on whatever host


class FolderLock:
    """One train.py per save_path: save_path/train.lock holds the holder's host, pid and start time.

    A second run is refused with one line naming the holder. A lock left by a killed run is taken over: on the
    same host when its pid is gone; from another host (a shared file system, where a pid means nothing) when its
    heartbeat, the file's modification time, which the holder renews every HEARTBEAT_S, is older than
    STALE_AFTER_S, or at once when it is this same SLURM job before a requeue. Creating the lock is also the check
    that save_path is writable at all."""

    def __init__(self, folder: str, held_by_parent: bool = False):
        self.folder, self.path = folder, os.path.join(folder, LOCK_FILE)
        self.held_by_parent = held_by_parent or os.environ.get("TRAIN_LOCK_HELD") == os.path.abspath(folder)
        self._stop = threading.Event()

    def __enter__(self):
        if self.held_by_parent:  # a rank of a run whose launcher holds the lock
            return self
        self.created_folder = not os.path.isdir(self.folder)
        try:
            os.makedirs(self.folder, exist_ok=True)
            while not self._create():
                holder = self._holder()
                if not self._gone(holder):
                    raise InputError(f"--save_path {self.folder}: another train.py is writing here (pid "
                                     f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}); "
                                     f"wait for it or use another --save_path (if that run is gone, delete "
                                     f"{self.path})")
                print(f"warning: {self.path}: taking over the lock of a run that is gone "
                      f"(pid {holder.get('pid')} on {holder.get('host')})", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
        except OSError as e:
            raise os_problem(e, f"--save_path {self.folder}: cannot write there")
        os.environ["TRAIN_LOCK_HELD"] = os.path.abspath(self.folder)  # inherited by the ranks it launches
        threading.Thread(target=self._heartbeat, daemon=True).start()
        return self

    def __exit__(self, *exc):
        if self.held_by_parent:
            return False
        self._stop.set()
        os.environ.pop("TRAIN_LOCK_HELD", None)
        holder = self._holder()
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                os.remove(self.path)
            if self.created_folder:  # refused input leaves no empty save_path behind
                with contextlib.suppress(OSError):
                    os.rmdir(self.folder)  # only if empty
        return False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID"),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        except BaseException:  # a full disk: an empty lock would shut out every later run until it went stale
            with contextlib.suppress(OSError):
                os.remove(self.path)
            raise
        return True

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # removed meanwhile, or written half by a run killed while taking it

    def _gone(self, holder: dict) -> bool:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _pid_alive(holder["pid"])
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("job") == job:  # this very job before SLURM requeued it, maybe on another node
            return True
        return age > STALE_AFTER_S

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)
