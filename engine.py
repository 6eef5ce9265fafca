"""The training and evaluation loop, written out by hand, and the run's device, precision and process group.

`train_one_epoch` does forward, loss, backward, clipping, the optimizer and scheduler steps inline;
`evaluate` runs under inference_mode and returns the logits of the whole validation set, gathered from every
rank so metrics are those one process would report. Losses are summed on the device and read only at logging
points, because `.item()` on every step stalls a GPU.
"""
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

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
        if self.precision == "fp32":
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


def launch_local_workers(script: str, argv: list, nproc: int) -> int:
    """Run `script argv` in nproc processes as `torchrun --standalone` would; their exit code (75: preempted)."""
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
    except SignalException:
        return PREEMPTED_EXIT  # the workers got the signal too and saved before exiting
    return 0


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# --------------------------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, lr_main: float, lr_head: float, weight_decay: float, device: torch.device):
    """AdamW: the encoder at lr_main, the head at lr; no decay on biases and LayerNorm weights."""
    groups = {}
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if name.startswith("classifier.") else "encoder"
        decay = param.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name
        groups.setdefault((part, decay), []).append(param)
    param_groups = [{"params": params, "lr": lr_head if part == "head" else lr_main,
                     "weight_decay": weight_decay if decay else 0.0}
                    for (part, decay), params in sorted(groups.items())]
    # fused AdamW runs one kernel over all parameters (CPU and CUDA in current PyTorch); foreach is the fallback
    try:
        return torch.optim.AdamW(param_groups, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True)


def build_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to each group's lr, then linear decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "features") if k in batch}


# ------------------------------------------------------------------------------------------------- the loop
def clip_gradients(model, optimizer, max_norm: float, scaler) -> None:
    """clip_grad_norm_, in fewer passes over the gradients where the optimizer is fused AdamW.

    The norm comes from one dot product per gradient (half the time of torch's norm kernels on CPU), and the
    scaling is left to the fused AdamW kernel, which divides every gradient by `optimizer.grad_scale` as it reads
    it (the hook GradScaler uses for fp16): a read and a write of every gradient saved. fp16's GradScaler needs
    that hook itself, so there, and with other optimizers, torch's clip_grad_norm_ does it."""
    if scaler.is_enabled() or not optimizer.defaults.get("fused"):
        nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return
    grads = [p.grad.reshape(-1) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    norm = torch.stack([torch.dot(g, g) for g in grads]).sum().sqrt()
    # 1 / clip_grad_norm_'s coefficient: gradients are divided by it, and never scaled up
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)


def train_one_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, run: Run, accum: int,
                    max_grad_norm: float, log_every: int, desc: str, on_update=None) -> dict:
    """One pass over `loader`, cut short when `on_update` returns True; returns mean loss, samples, tokens, seconds."""
    model.train()
    loss_sum = torch.zeros((), device=run.device)
    samples = tokens = 0
    started = time.perf_counter()
    bar = tqdm(total=len(loader), desc=desc, disable=not run.is_main, dynamic_ncols=True, leave=False)
    for step, batch in enumerate(loader):
        # counted on the host copy: summing the mask on the GPU would sync with it on every step
        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
        batch = to_device(batch, run.device)
        last_micro_step = (step + 1) % accum == 0 or step + 1 == len(loader)
        # DDP all-reduces gradients only on the micro-step that ends an accumulation
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_micro_step else contextlib.nullcontext()
        with sync:
            with run.autocast():
                logits = model(**model_inputs(batch))  # (batch, n_classes)
            loss = loss_fn(logits.float(), batch["labels"])
            scaler.scale(loss / accum).backward()
        if last_micro_step:
            if max_grad_norm > 0:
                scaler.unscale_(optimizer)
                clip_gradients(model, optimizer, max_grad_norm, scaler)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        samples += len(batch["labels"])
        bar.update(1)
        if run.is_main and ((step + 1) % log_every == 0 or step + 1 == len(loader)):
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4f}",
                            samples_s=f"{samples * run.world_size / elapsed:.1f}")
        if on_update is not None and last_micro_step and on_update(step + 1):
            break  # asked to stop (preemption): the caller saves and exits
    bar.close()
    seconds = time.perf_counter() - started
    return {"loss": loss_sum.item() / max(1, len(loader)), "samples": samples * run.world_size,
            "tokens": tokens * run.world_size, "seconds": seconds}


@torch.inference_mode()
def evaluate(model, loader, run: Run, n_rows: int) -> torch.Tensor:
    """Logits (n_rows, n_classes) in dataset order, from every rank, with the sampler's padded repeats removed."""
    model.eval()
    indices, outputs = [], []
    for batch in loader:
        batch = to_device(batch, run.device)
        with run.autocast():
            logits = model(**model_inputs(batch))
        outputs.append(logits.float())
        indices.append(batch["index"])
    n_out = unwrap(model).classifier.out_features
    logits = torch.cat(outputs) if outputs else torch.zeros((0, n_out), device=run.device)
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=run.device)
    if run.world_size > 1:
        logits, index = _gather_rows(logits, index, run)
    result = torch.zeros((n_rows, n_out), device=logits.device)
    result[index] = logits  # repeated rows write the same values twice
    return result.cpu()


def _gather_rows(logits, index, run: Run):
    """all_gather of per-rank (rows, classes) tensors whose row counts may differ."""
    count = torch.tensor([len(index)], device=logits.device)
    counts = [torch.zeros_like(count) for _ in range(run.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    pad = longest - len(index)
    logits = torch.cat([logits, logits.new_zeros((pad, logits.shape[1]))])
    index = torch.cat([index, index.new_zeros(pad)])
    all_logits = [torch.zeros_like(logits) for _ in range(run.world_size)]
    all_index = [torch.zeros_like(index) for _ in range(run.world_size)]
    dist.all_gather(all_logits, logits)
    dist.all_gather(all_index, index)
    keep = [slice(0, int(c.item())) for c in counts]
    return (torch.cat([t[k] for t, k in zip(all_logits, keep)]), torch.cat([t[k] for t, k in zip(all_index, keep)]))


# ------------------------------------------------------------------------------------------------- metrics
def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> torch.Tensor:
    scaled = logits.float() / temperature
    return torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=-1)


def compute_metrics(logits: torch.Tensor, labels, loss_fn, multi_label: bool, n_classes: int,
                    thresholds=None) -> dict:
    """loss, accuracy (exact match for multi-label) and macro-F1 over all classes."""
    from sklearn.metrics import accuracy_score, f1_score

    from calibrate import decide, target_matrix
    y = target_matrix(labels, n_classes) if multi_label else np.asarray(labels)
    target = torch.as_tensor(y, dtype=torch.float32 if multi_label else torch.long)
    loss = float(loss_fn(logits.float(), target))
    probs = probabilities(logits, multi_label).numpy()
    pred = decide(probs, multi_label, thresholds)
    kwargs = {} if multi_label else {"labels": list(range(n_classes))}
    return {"loss": loss, "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0, **kwargs))}


def is_better(metric: str, value: float, best) -> bool:
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "loss" else value > best


def balanced_class_weights(counts: list, n_rows: int, multi_label: bool) -> torch.Tensor:
    """Single-label: n_rows / (n_classes * count), sklearn's 'balanced'. Multi-label: BCE pos_weight
    negatives / positives. A class without rows gets weight 1 (it contributes nothing either way)."""
    weights = []
    for c in counts:
        if c == 0:
            weights.append(1.0)
        elif multi_label:
            weights.append((n_rows - c) / c)
        else:
            weights.append(n_rows / (len(counts) * c))
    return torch.tensor(weights, dtype=torch.float32)


# ------------------------------------------------------------------------------------- --boost vector cache
def checkpoint_fingerprint(model_path: str) -> str:
    """Identifies a checkpoint cheaply: a folder by its config and its weight files' names, sizes and times."""
    import hashlib
    h = hashlib.sha256(model_path.encode())
    if os.path.isdir(model_path):
        for name in sorted(os.listdir(model_path)):
            full = os.path.join(model_path, name)
            if name == "config.json":
                with open(full, "rb") as f:
                    h.update(f.read())
            elif name.endswith((".safetensors", ".bin", ".pt", ".h5", ".msgpack")):
                st = os.stat(full)
                h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def boost_cache_file(save_path: str, model_path: str, max_length: int, pooling: str, precision: str) -> str:
    import hashlib
    parts = f"{checkpoint_fingerprint(model_path)}|{max_length}|{pooling}|{precision}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:24]
    return os.path.join(save_path, "boost_cache", f"{key}.safetensors")


def text_digest(text: str) -> bytes:
    import hashlib
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@torch.inference_mode()
def cached_sentence_vectors(model, tokenizer, texts: list, input_ids: list, cfg, model_path: str,
                            run: Run) -> torch.Tensor:
    """Frozen-encoder sentence vectors (rows, features) for `texts`, computed once and kept on disk.

    The cache file is keyed by the checkpoint, max_length, pooling and precision; inside it each vector is
    keyed by a hash of its text, so new or edited sentences are encoded and unchanged ones are not.
    """
    from safetensors.torch import load_file, save_file

    from checkpoint import atomic_path
    from dataset import BucketBatchSampler, Collator, EncodedDataset
    path = boost_cache_file(cfg.save_path, model_path, cfg.max_length, cfg.pooling, run.precision)
    known_vectors, known = torch.zeros((0, unwrap(model).n_features)), {}
    if os.path.exists(path):
        try:
            stored = load_file(path)
            known_vectors = stored["vectors"]
            known = {bytes(d.tolist()): i for i, d in enumerate(stored["digests"])}
        except Exception as e:  # a damaged cache is only lost time: rebuild it
            print(f"warning: ignoring unreadable cache {path} ({e})", file=sys.stderr)
    digests = [text_digest(t) for t in texts]
    todo = sorted({i for i, d in enumerate(digests) if d not in known}, key=lambda i: digests[i])
    todo = list({digests[i]: i for i in todo}.values())  # duplicate texts are encoded once
    new_vectors = torch.zeros((0, known_vectors.shape[1]))
    if todo:
        started = time.perf_counter()
        subset = EncodedDataset([input_ids[i] for i in todo])
        loader = torch.utils.data.DataLoader(
            subset, batch_sampler=BucketBatchSampler(subset.lengths(), 128, shuffle=False),
            collate_fn=Collator(tokenizer.pad_token_id or 0))
        encoder = unwrap(model).eval()
        out = torch.zeros((len(todo), known_vectors.shape[1]))
        for batch in tqdm(loader, desc="encoding for --boost", disable=not run.is_main, leave=False):
            batch = to_device(batch, run.device)
            with run.autocast():
                vectors = encoder.sentence_vector(batch["input_ids"], batch["attention_mask"])
            out[batch["index"].cpu()] = vectors.float().cpu()
        new_vectors = out
        for j, i in enumerate(todo):
            known[digests[i]] = len(known_vectors) + j
        run.print(f"--boost: encoded {len(todo)} new sentence(s) in {time.perf_counter() - started:.1f}s, "
                  f"{len(texts) - len(todo)} from the cache {path}")
        if run.is_main:
            all_vectors = torch.cat([known_vectors, new_vectors])
            all_digests = torch.zeros((len(known), 16), dtype=torch.uint8)
            for d, i in known.items():
                all_digests[i] = torch.tensor(list(d), dtype=torch.uint8)
            with atomic_path(path) as tmp:
                save_file({"vectors": all_vectors.contiguous(), "digests": all_digests}, tmp)
        known_vectors = torch.cat([known_vectors, new_vectors])
    else:
        run.print(f"--boost: all {len(texts)} sentence vectors from the cache {path}")
    return known_vectors[[known[d] for d in digests]]
