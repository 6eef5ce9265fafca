"""Fine-tune a BERT-family encoder for sentence classification.

    python train.py -d classes.json -p False                        # CPU or one GPU, shipped GoEmotions example
    python train.py -d classes.json --train_path my.csv --n_epochs 4 --bert_name bert-base-uncased
    python train.py -d classes.json -p True                         # every GPU of this machine (DDP)
    torchrun --nproc_per_node 4 train.py -d classes.json -p True    # the same, launched by hand
    python train.py -d classes.json --resume auto --save_every 500  # continue a stopped run exactly
    sbatch slurm/one_node_multi_gpu.sh -d classes.json              # SLURM (see slurm/ and README)

Everything is checked before the first step; problems are printed one per line with file, row and column,
and the exit code is 2. The best epoch (by --metric) is saved to --save_path, which predict.py reads.
SIGUSR1 or SIGTERM (a cluster's preemption or time limit) make it finish the current step, save a resumable
checkpoint in --save_path/resume/ and exit with code 75; --resume auto then continues where it stopped.
"""
import os
import random
import sys
import time

import numpy as np
import torch

from config import Config, InputError, build_parser, config_from_args, resolve_model_path, run_cli


def parse_config(argv=None) -> Config:
    parser = build_parser("train.py", ("train", "both"), __doc__.split("\n\n")[0])
    return config_from_args(parser.parse_args(argv))


def check_options(cfg: Config) -> None:
    """Option values that no parser type catches."""
    rules = [(cfg.n_epochs >= 1, "--n_epochs must be at least 1"),
             (cfg.batch_size >= 1, "--batch_size must be at least 1"),
             (cfg.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1"),
             (cfg.lr > 0 and cfg.lr_main > 0, "--lr and --lr_main must be positive"),
             (0 <= cfg.dropout_p < 1, "--dropout_p must be in [0, 1)"),
             (0 <= cfg.warmup_ratio < 1, "--warmup_ratio must be in [0, 1)"),
             (cfg.max_length >= 2, "--max_length must be at least 2"),
             (cfg.early_stop == -1 or cfg.early_stop >= 1, "--early_stop must be -1 (off) or at least 1"),
             (cfg.save_every >= 0, "--save_every must be 0 (save only when stopped by a signal) or more"),
             (not cfg.boost or not cfg.bert_finetuning,
              "--boost True needs --bert_finetuning False (vectors can only be cached from a frozen encoder)")]
    for ok, message in rules:
        if not ok:
            raise InputError(message)


def load_data(cfg: Config):
    """(names, train LabelledData, valid LabelledData), all files checked before anything heavy starts."""
    from dataset import (LabelledData, check_training_data, check_validation_data, load_label_map,
                         load_labelled_csv, stratified_split)
    names = load_label_map(cfg.dict_path)
    loaded, problems = {}, []
    for path in filter(None, (cfg.train_path, cfg.valid_path)):  # both files checked before either is reported
        try:
            loaded[path] = load_labelled_csv(path, cfg.text_col, cfg.label_col, names, cfg.multi_label)
        except InputError as e:
            problems.append(str(e))
    if problems:
        raise InputError("\n".join(problems))
    train = loaded[cfg.train_path]
    check_training_data(cfg.train_path, train, names, cfg.multi_label)
    if cfg.valid_path:
        valid = loaded[cfg.valid_path]
        check_validation_data(cfg.valid_path, train, valid, names, cfg.multi_label)
        return names, train, valid
    train_idx, valid_idx = stratified_split(train.labels, cfg.valid_frac, cfg.seed, names, cfg.multi_label)

    def subset(idx):
        return LabelledData([train.texts[i] for i in idx], [train.labels[i] for i in idx],
                            [train.rows[i] for i in idx])
    return names, subset(train_idx), subset(valid_idx)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv=None) -> int:
    cfg = parse_config(argv)
    check_options(cfg)
    from engine import launch_local_workers, local_worker_count
    if workers := local_worker_count(cfg.parallel and cfg.parallel_mode == "ddp", cfg.device):
        load_data(cfg)  # bad files are reported once, here, not once per worker
        return launch_local_workers(__file__, sys.argv[1:] if argv is None else argv, workers)
    from resume import StopRequest
    with StopRequest().installed() as stop:
        return train(cfg, stop)


def build_model(cfg: Config, n_classes: int, run):
    """(classifier on run.device, tokenizer, resolved checkpoint path) from --bert_name."""
    from model import (BertClassifier, fast_training_encoder, load_pretrained_encoder, load_tokenizer,
                       max_supported_length)
    model_path = resolve_model_path(cfg.bert_name)
    tokenizer = load_tokenizer(model_path)
    encoder = load_pretrained_encoder(model_path)
    limit = max_supported_length(encoder, tokenizer)
    if cfg.max_length > limit:
        raise InputError(f"--max_length {cfg.max_length}: {cfg.bert_name} supports at most {limit} tokens")
    model = BertClassifier(fast_training_encoder(encoder), n_classes, cfg.pooling, cfg.dropout_p)
    if not cfg.bert_finetuning:
        model.freeze_encoder()
    elif cfg.freeze_word_embeddings and encoder.get_input_embeddings() is not None:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    if cfg.pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler.requires_grad_(False)  # unused by this pooling: DDP would wait for its gradients forever
    return model.to(run.device), tokenizer, model_path


def encode_rows(data, model, tokenizer, model_path: str, cfg: Config, run):
    """Token ids of every row, tokenised once; with --boost, the frozen encoder's cached sentence vectors."""
    from dataset import EncodedDataset, tokenize
    ids = tokenize(tokenizer, data.texts, cfg.max_length)
    if not cfg.boost:
        return EncodedDataset(ids, data.labels)
    from engine import cached_sentence_vectors
    return EncodedDataset(labels=data.labels,
                          features=cached_sentence_vectors(model, tokenizer, data.texts, ids, cfg, model_path, run))


def train(cfg: Config, stop) -> int:
    """Train one process (one rank of several under DDP); PREEMPTED_EXIT if stopped by a signal."""
    names, train_data, valid_data = load_data(cfg)

    from checkpoint import save_model, write_json
    from dataset import BucketBatchSampler, Collator, class_counts
    from engine import (build_optimizer, build_scheduler, cleanup_run, compute_metrics, evaluate, is_better,
                        setup_run, train_one_epoch, unwrap)
    from resume import PREEMPTED_EXIT, save_resumable, start_or_resume

    run = setup_run(cfg.device, cfg.precision)
    if cfg.parallel and run.world_size == 1:
        gpus = torch.cuda.device_count()
        run.print(f"-p True: {gpus} GPU(s) on this machine, training in one process on {run.device}")
    seed_everything(cfg.seed)
    model, tokenizer, model_path = build_model(cfg, len(names), run)
    started = time.perf_counter()
    train_set, valid_set = (encode_rows(d, model, tokenizer, model_path, cfg, run) for d in (train_data, valid_data))
    tokenize_s = time.perf_counter() - started
    collate = Collator(tokenizer.pad_token_id or 0, len(names), cfg.multi_label)
    train_sampler = BucketBatchSampler(train_set.lengths(), cfg.batch_size, True, cfg.seed, run.world_size, run.rank)
    valid_sampler = BucketBatchSampler(valid_set.lengths(), cfg.batch_size * 4, False, 0, run.world_size, run.rank)
    # a generator of their own keeps the loaders from drawing on the global RNG, which dropout uses: resumable
    loader_kw = dict(collate_fn=collate, num_workers=cfg.num_workers, pin_memory=run.device.type == "cuda",
                     generator=torch.Generator().manual_seed(cfg.seed))
    valid_loader = torch.utils.data.DataLoader(valid_set, batch_sampler=valid_sampler, **loader_kw)

    if run.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    elif cfg.parallel and cfg.parallel_mode == "dp" and torch.cuda.device_count() > 1:
        model = torch.nn.DataParallel(model)
    optimizer = build_optimizer(model, cfg.lr_main, cfg.lr, cfg.weight_decay, run.device)
    updates_per_epoch = -(-len(train_sampler) // cfg.gradient_accumulation_steps)
    total_updates = updates_per_epoch * cfg.n_epochs
    scheduler = build_scheduler(optimizer, int(cfg.warmup_ratio * total_updates), total_updates)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    counts = class_counts(train_data.labels, len(names), cfg.multi_label)
    loss_fn = make_loss(cfg, counts, len(train_data.labels), run.device)

    n_params = sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)
    run.print(f"train {len(train_data.texts)} rows, validation {len(valid_data.texts)} rows, {len(names)} classes "
              f"({cfg.train_path}{' + ' + cfg.valid_path if cfg.valid_path else ', split ' + str(cfg.valid_frac)})\n"
              f"model {cfg.bert_name} ({model_path}), pooling {cfg.pooling}, {n_params / 1e6:.1f}M trainable "
              f"parameters{', encoder frozen' if not cfg.bert_finetuning else ''}\n"
              f"device {run.device} x{run.world_size}, precision {run.precision}, batch {cfg.batch_size} per process"
              f" x {run.world_size} process(es) x {cfg.gradient_accumulation_steps} accumulation = "
              f"{cfg.batch_size * run.world_size * cfg.gradient_accumulation_steps} per update, "
              f"{updates_per_epoch} updates per epoch, {cfg.n_epochs} epoch(s); data encoded in {tokenize_s:.1f}s")

    progress = start_or_resume(cfg, run, unwrap(model), optimizer, scheduler, scaler)

    def save_state():
        save_resumable(cfg.save_path, run, unwrap(model), optimizer, scheduler, scaler, progress, cfg)

    def after_update(batches_done: int) -> bool:
        """Count the update (batches_done: of this epoch, resumed ones included), save every --save_every
        updates; True stops the epoch (a preemption signal)."""
        progress.updates += 1
        progress.batches_done = batches_done
        stopping = stop.agreed(run)
        if stopping or (cfg.save_every > 0 and progress.updates % cfg.save_every == 0):
            save_state()
        return stopping

    history, totals = progress.history, progress.totals
    valid_target = valid_data.labels
    split = {"parts": 1}  # micro-batches per batch; doubled each time a step runs out of memory
    for epoch in range(progress.epoch, cfg.n_epochs + 1):
        if cfg.early_stop > 0 and progress.stale >= cfg.early_stop:
            run.print(f"early stop: {progress.stale} epoch(s) without a better valid {cfg.metric}")
            break
        stats = train_epoch_halving_on_oom(
            lambda sampler, accum: train_one_epoch(
                model, torch.utils.data.DataLoader(train_set, batch_sampler=sampler, **loader_kw), optimizer,
                scheduler, scaler, loss_fn, run, accum, cfg.max_grad_norm, cfg.log_every,
                f"epoch {epoch}/{cfg.n_epochs}", lambda micro_steps: after_update(sampler.on_update(micro_steps))),
            train_sampler, epoch, progress.batches_done, cfg, run, optimizer, split)
        for k in totals:
            totals[k] += stats[k]
        if stop.stopping:
            run.print(f"preemption signal: stopped after update {progress.updates}, resumable checkpoint in "
                      f"{cfg.save_path}/resume; continue with --resume auto")
            cleanup_run()
            return PREEMPTED_EXIT
        logits = evaluate(model, valid_loader, run, len(valid_set))
        metrics = compute_metrics(logits, valid_target, loss_fn.cpu(), cfg.multi_label, len(names))
        loss_fn.to(run.device)
        record = {"epoch": epoch, "train_loss": stats["loss"],
                  **{f"valid_{k}": v for k, v in metrics.items()},
                  "train_samples_per_s": stats["samples"] / stats["seconds"],
                  "train_tokens_per_s": stats["tokens"] / stats["seconds"]}
        history.append(record)
        improved = is_better(cfg.metric, metrics[cfg.metric], progress.best)
        run.print(f"epoch {epoch}: train loss {stats['loss']:.4f} | valid loss {metrics['loss']:.4f} "
                  f"accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} | "
                  f"{record['train_samples_per_s']:.1f} samples/s{' | best so far, saved' if improved else ''}")
        if improved:
            progress.best, progress.best_epoch, progress.best_logits, progress.stale = (metrics[cfg.metric], epoch,
                                                                                        logits, 0)
            if run.is_main:
                save_model(cfg.save_path, unwrap(model), tokenizer, cfg, names, {"temperature": 1.0})
        else:
            progress.stale += 1
        if run.is_main:
            write_json(os.path.join(cfg.save_path, "metrics.json"),
                       {"best_epoch": progress.best_epoch, "metric": cfg.metric, "epochs": history})
        progress.epoch, progress.batches_done = epoch + 1, 0
        if stop.agreed(run) or cfg.save_every > 0:
            save_state()
        if stop.stopping:
            run.print(f"preemption signal: stopped after epoch {epoch}; continue with --resume auto")
            cleanup_run()
            return PREEMPTED_EXIT

    best_record = history[progress.best_epoch - 1]
    run.print(f"done: best epoch {progress.best_epoch} | valid accuracy {best_record['valid_accuracy']:.4f} "
              f"macro-F1 {best_record['valid_macro_f1']:.4f} loss {best_record['valid_loss']:.4f} | "
              f"throughput {totals['samples'] / totals['seconds']:.1f} samples/s, "
              f"{totals['tokens'] / totals['seconds']:.0f} tokens/s | model saved in {cfg.save_path}")
    if run.is_main:  # temperature, multi-label thresholds and save_path/report/ from the best epoch
        from report import training_report
        training_report(cfg.save_path, progress.best_logits.numpy(), valid_target, names, cfg.multi_label,
                        history, cfg.metric, progress.best_epoch, run.print)
    cleanup_run()
    return 0


OOM_ERRORS = (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)


def train_epoch_halving_on_oom(train_epoch, sampler, epoch: int, start: int, cfg: Config, run, optimizer,
                               split: dict) -> dict:
    """train_epoch(sampler, accumulation) from batch `start`; when a step runs out of memory, halve the batch and
    double the accumulation (the same rows per update), say so, and go on from the last update. At 1, stop."""
    from dataset import SplitBatchSampler
    done = start  # whole batches of this epoch whose optimizer update is finished
    while True:
        sampler.set_epoch(epoch, skip_batches=done)
        progress = SplitBatchSampler(sampler, split["parts"], done)
        try:
            return train_epoch(progress, cfg.gradient_accumulation_steps * split["parts"])
        except OOM_ERRORS:
            if run.world_size > 1:
                raise  # the other ranks cannot be told to re-split their batches: stop rather than hang
        # out of the except block, the failed step's tensors are free; its partial gradients are dropped
        done = progress.updated
        optimizer.zero_grad(set_to_none=True)
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        size = -(-cfg.batch_size // split["parts"])
        if size <= 1:
            raise InputError(f"out of memory on {run.device} with a batch of 1 sentence; lower --max_length "
                             "or use a smaller --bert_name")
        split["parts"] *= 2
        accum = cfg.gradient_accumulation_steps
        run.print(f"out of memory on {run.device} at batch size {size}: batch size -> "
                  f"{-(-cfg.batch_size // split['parts'])}, gradient accumulation {accum * split['parts'] // 2} -> "
                  f"{accum * split['parts']} (still {cfg.batch_size * accum} sentences per update); "
                  f"epoch {epoch} goes on from batch {done + 1}")


def make_loss(cfg: Config, counts: list, n_rows: int, device: torch.device):
    """Cross-entropy (single-label) or BCE with logits (multi-label), optionally weighted by class frequency."""
    weights = None
    if cfg.class_weights == "balanced":
        from engine import balanced_class_weights
        weights = balanced_class_weights(counts, n_rows, cfg.multi_label).to(device)
    if cfg.multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights)


if __name__ == "__main__":
    run_cli(main)
