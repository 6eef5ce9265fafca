"""The training and evaluation loop, written out by hand: optimizer, scheduler, clipping, one epoch, evaluation.

`train_one_epoch` does forward, loss, backward, clipping, the optimizer and scheduler steps inline;
`evaluate` runs under inference_mode and returns the logits of the whole validation set, gathered from every
rank so metrics are those one process would report. Losses are summed on the device and read only at logging
points, because `.item()` on every step stalls a GPU.
"""
import contextlib
import re
import time

import torch
import torch.distributed as dist
from torch import nn

import cpu_threads
from runlog import EpochLog
from runtime import Run, unwrap


# --------------------------------------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, lr_main: float, lr_head: float, weight_decay: float, device: torch.device,
                    llrd: float = 1.0):
    """AdamW: the encoder at lr_main (times llrd per layer below the top, `layer_depths`), the head at lr; no decay
    on biases and LayerNorm weights."""
    named = [(name, p) for name, p in unwrap(model).named_parameters() if p.requires_grad]
    depths = layer_depths([name for name, _ in named]) if llrd != 1 else {}
    groups = {}
    for name, param in named:
        part = "head" if name.startswith("classifier.") else "encoder"
        decay = param.ndim >= 2 and "LayerNorm" not in name and "layer_norm" not in name
        depth = depths[name] if part == "encoder" and llrd != 1 else 0  # llrd 1: the groups there always were
        groups.setdefault((part, decay, depth), []).append(param)
    param_groups = [{"params": params, "lr": lr_head if part == "head" else lr_main * llrd ** depth,
                     "weight_decay": weight_decay if decay else 0.0}
                    for (part, decay, depth), params in sorted(groups.items())]
    # fused AdamW runs one kernel over all parameters (CPU and CUDA in current PyTorch); foreach is the fallback
    try:
        return torch.optim.AdamW(param_groups, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True)


# an encoder's stack of layers in every family we know: BERT's encoder.layer.N, GPT-2's h.N, Llama's layers.N, T5's
# block.N; ALBERT shares one layer's weights across its depth, so its parameters have no index
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDING = re.compile(r"embed|(?:^|\.)(?:wte|wpe|mask_emb)\b")  # GPT-2 and XLNet name theirs without "embed"


def layer_depths(names: list) -> dict:
    """Parameter name -> layers below the top (--llrd's exponent): 0 for the top layer and what sits above the
    stack (a final norm, the pooler, the head), L - 1 for the lowest of L layers, L for the embeddings."""
    index = {name: int(m.group(1)) for name in names if (m := LAYER_INDEX.search(name))}
    n_layers = max(index.values()) + 1 if index else 0
    return {name: n_layers - 1 - index[name] if name in index
            else n_layers if EMBEDDING.search(name) and not name.startswith("classifier.") else 0 for name in names}


def build_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to each group's lr, then linear decay to zero."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class WeightAverage:
    """--ema: an exponential moving average of the trainable weights, `shadow = d * shadow + (1 - d) * weight`
    after every optimizer update, with d = min(decay, (1 + n) / (10 + n)) at the n-th update so that the first
    updates are not dominated by the pretrained weights (TensorFlow's ExponentialMovingAverage with num_updates).
    `applied()` swaps the average in for validation and saving, and the trained weights back after."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.params = [p for p in unwrap(model).parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.weights = [p.detach() for p in self.params]  # views: the optimizer updates the parameters in place

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        torch._foreach_lerp_(self.shadow, self.weights, 1 - self.current_decay())

    @torch.no_grad()
    def _swap(self) -> None:
        for param, average in zip(self.params, self.shadow):
            held = param.detach().clone()
            param.copy_(average)
            average.copy_(held)

    @contextlib.contextmanager
    def applied(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        for average, saved in zip(self.shadow, state["shadow"]):
            average.copy_(saved)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "features", "window_counts")
            if k in batch}


# ------------------------------------------------------------------------------------------------- the loop
class Diverged(Exception):
    """The loss or the gradient norm stopped being finite: the update number where it was seen."""

    def __init__(self, update: int):
        super().__init__(f"update {update}")
        self.update = update


def nonfinite_seen(flag: torch.Tensor, run: Run) -> bool:
    """Whether any rank saw a non-finite loss or gradient norm (one tiny all-reduce: all ranks stop together)."""
    if run.world_size > 1:
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def clip_gradients(model, optimizer, max_norm: float, scaler) -> torch.Tensor:
    """clip_grad_norm_, in fewer passes over the gradients where the optimizer is fused AdamW.

    The norm comes from one dot product per gradient (half the time of torch's norm kernels on CPU), and the
    scaling is left to the fused AdamW kernel, which divides every gradient by `optimizer.grad_scale` as it reads
    it (the hook GradScaler uses for fp16): a read and a write of every gradient saved. fp16's GradScaler needs
    that hook itself, so there, and with other optimizers, torch's clip_grad_norm_ does it. Returns the norm."""
    if scaler.is_enabled() or not optimizer.defaults.get("fused"):
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    grads = [p.grad.reshape(-1) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.stack([torch.dot(g, g) for g in grads]).sum().sqrt()
    # 1 / clip_grad_norm_'s coefficient: gradients are divided by it, and never scaled up
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    return norm


def train_one_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, run: Run, accum: int,
                    max_grad_norm: float, log: EpochLog, on_update=None) -> dict:
    """One pass over `loader`, cut short when `on_update` returns True; returns mean loss, samples, tokens, seconds.
    `log` (runlog.EpochLog) shows progress and writes a log row every --log_every updates. Raises Diverged when a
    loss or gradient norm is not finite, looked at on those logging steps (reading it costs a GPU sync) and at the
    end; fp16 steps that the gradient scaler skips for overflow are normal, not counted."""
    model.train()
    loss_sum = torch.zeros((), device=run.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    samples = tokens = updates = 0
    started = time.perf_counter()
    # a context: the bar is closed on errors too, so that an error message starts a line of its own
    with log.opened(len(loader)):
        for step, batch in enumerate(loader):
            cpu_threads.adapt()  # fewer threads while another process computes on our CPUs (one clock read)
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
            nonfinite |= ~torch.isfinite(loss.detach())
            if last_micro_step:
                updates += 1
                if max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    norm = clip_gradients(model, optimizer, max_grad_norm, scaler)
                    if not scaler.is_enabled():
                        nonfinite |= ~torch.isfinite(norm.to(nonfinite.device))
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            samples += len(batch["labels"])
            log.advance()
            logging_step = (last_micro_step and log.due(updates)) or step + 1 == len(loader)
            if logging_step and nonfinite_seen(nonfinite, run):
                raise Diverged(updates)
            if run.is_main and logging_step:
                log.record(updates, step + 1, loss_sum.item(), samples * run.world_size,
                           optimizer.param_groups[0]["lr"])  # the encoder's, or the head's if it trains alone
            if on_update is not None and last_micro_step and on_update(step + 1):
                break  # asked to stop (preemption): the caller saves and exits
    if nonfinite_seen(nonfinite, run):  # stopped between logging steps (preemption)
        raise Diverged(updates)
    seconds = time.perf_counter() - started
    return {"loss": loss_sum.item() / max(1, len(loader)), "samples": samples * run.world_size,
            "tokens": tokens * run.world_size, "seconds": seconds}


@torch.inference_mode()
def evaluate(model, loader, run: Run, n_rows: int) -> torch.Tensor:
    """Logits (n_rows, n_classes) in dataset order, from every rank, with the sampler's padded repeats removed."""
    model.eval()
    indices, outputs = [], []
    for batch in loader:
        cpu_threads.adapt()
        batch = to_device(batch, run.device)
        with run.autocast():
            logits = model(**model_inputs(batch))
        outputs.append(logits.float())
        indices.append(batch["index"])
    n_out = unwrap(model).n_classes  # the groups' count with --label_groups
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

