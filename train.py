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
checkpoint in --save_path/resume/ and exit with code 75; Ctrl-C does the same and exits 130 (a second Ctrl-C stops
at once); --resume auto then continues where it stopped. A run that diverges or cannot write (disk full) stops with
one line and exit code 3, the last complete model in place. One run at a time writes a --save_path (a lock file).
"""
import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import cpu_threads

cpu_threads.configure()  # before torch loads: OpenMP reads its thread count and wait policy once, at load time
PROCESS_STARTED = time.perf_counter()  # what the imports below cost shows in the closing time line
import numpy as np
import torch

import engine
from config import Config, InputError, RunFault, build_parser, config_from_args, resolve_model_path, run_cli
from checkpoint import FolderLock, model_in_place, save_model, write_json, writing
from dataset import (BucketBatchSampler, Collator, EncodedDataset, SplitBatchSampler, check_task_data,
                     check_training_data, check_validation_data, class_counts, data_fingerprint, load_label_map,
                     load_labelled_file, column_clash, prediction_columns, split_keys, stratified_split, tokenize)
from distill import check_teacher, teacher_rules, teacher_targets
from label_groups import GroupReadOut, load_label_groups
from losses import make_loss, make_multitask_loss
from metrics import compute_metrics, is_better
from repeats import check_repeat_options, repeated, train_members
from resume import INTERRUPTED_EXIT, PREEMPTED_EXIT, Progress, StopRequest, save_resumable, start_or_resume
from runlog import EpochLog, RunLog
from runtime import Run, cleanup_run, launch_local_workers, local_worker_count, setup_run, unwrap
from tasks import build_tasks, combined_names, is_multitask, split_option, tasks_from_folder

OOM_ERRORS = (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)


def parse_config(argv=None) -> Config:
    parser = build_parser("train.py", ("train", "both"), __doc__.split("\n\n")[0])
    return config_from_args(parser.parse_args(argv))


def check_options(cfg: Config) -> None:
    """Option values that no parser type catches."""
    label_cols, last_seed = split_option(cfg.label_col), 2 ** 32 - max(cfg.seeds, 1)
    rules = [(bool(cfg.train_path), "--train_path is empty: name the training file"),
             (0 <= cfg.seed <= last_seed, f"--seed must be in [0, {last_seed}] (with --seeds {cfg.seeds}: every "
                                          "member's seed under 2^32)"),
             (cfg.num_workers >= 0, "--num_workers must be 0 or more"),
             (0 <= cfg.weight_decay < math.inf, "--weight_decay must be 0 or more (and finite)"),
             (cfg.max_grad_norm >= 0, "--max_grad_norm must be 0 (no clipping) or more"),
             (not {cfg.text_col, cfg.text_col2} & set(label_cols),
              f"--text_col {cfg.text_col}{f' / --text_col2 {cfg.text_col2}' if cfg.text_col2 else ''}: a text "
              f"column may not be a label column (--label_col {cfg.label_col})"),
             (cfg.text_col != cfg.text_col2, "--text_col2 must name another column than --text_col"),
             (not cfg.task_weights or len(label_cols) > 1, "--task_weights weighs the losses of several tasks "
                                                           "(--label_col a,b); this run has one"),
             (cfg.n_epochs >= 1, "--n_epochs must be at least 1"),
             (cfg.batch_size >= 1, "--batch_size must be at least 1"),
             (cfg.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1"),
             (cfg.lr > 0 and cfg.lr_main > 0, "--lr and --lr_main must be positive"),
             (0 <= cfg.dropout_p < 1, "--dropout_p must be in [0, 1)"),
             (0 <= cfg.warmup_ratio < 1, "--warmup_ratio must be in [0, 1)"),
             (cfg.max_length >= 2, "--max_length must be at least 2"),
             (cfg.early_stop == -1 or cfg.early_stop >= 1, "--early_stop must be -1 (off) or at least 1"),
             (cfg.save_every >= 0, "--save_every must be 0 (save only when stopped by a signal) or more"),
             (cfg.log_every >= 1, "--log_every must be at least 1"),
             (cfg.stride >= 0, "--stride must be 0 or more"),
             (cfg.max_windows >= 1, "--max_windows must be at least 1"),
             (cfg.long_text != "windows" or not (cfg.parallel and cfg.parallel_mode == "dp"),
              "--long_text windows with --parallel_mode dp: DataParallel would split a document's windows across "
              "GPUs; use --parallel_mode ddp"),
             (cfg.precision != "int8", "--precision int8 is for predicting with an ONNX export made by export.py "
                                       "--quantize int8; train with auto, fp32, bf16 or fp16"),
             (not cfg.boost or not cfg.bert_finetuning,
              "--boost True needs --bert_finetuning False (vectors can only be cached from a frozen encoder)"),
             (not cfg.boost_cache or cfg.boost, "--boost_cache is the folder of the --boost cache: add --boost True"),
             (not os.path.exists(cfg.boost_cache) or os.path.isdir(cfg.boost_cache),
              f"--boost_cache {cfg.boost_cache}: exists and is not a folder"),
             (not cfg.label_groups or not is_multitask(cfg), "--label_groups groups the classes of one task; it "
                                                             "does not combine with several tasks (--label_col a,b)"),
             (not cfg.label_groups or cfg.long_text != "windows", "--label_groups does not combine with --long_text "
                                                                  "windows (a document's windows are pooled as logits "
                                                                  "of the classes, not of their groups)")]
    for ok, message in rules + recipe_rules(cfg) + teacher_rules(cfg):
        if not ok:
            raise InputError(message)


def recipe_rules(cfg: Config) -> list:
    """check_options' rules for --loss, --label_smoothing, --llrd, --reinit_layers and --ema."""
    kinds = set(cfg.multi_label) if isinstance(cfg.multi_label, list) else {cfg.multi_label}
    return [(cfg.loss not in ("bce", "asl") or True in kinds,
             f"--loss {cfg.loss} is for multi-label tasks (--multi_label True); single-label: auto, ce or focal"),
            (cfg.loss != "ce" or False in kinds, "--loss ce is for single-label tasks; multi-label: auto, bce, "
                                                 "focal or asl"),
            (cfg.focal_gamma >= 0 and cfg.asl_gamma_neg >= 0, "--focal_gamma and --asl_gamma_neg must be 0 or more"),
            (0 <= cfg.asl_clip < 1, "--asl_clip must be in [0, 1)"),
            (0 <= cfg.label_smoothing < 1, "--label_smoothing must be in [0, 1)"),
            (cfg.label_smoothing == 0 or False in kinds, "--label_smoothing is for single-label cross-entropy; "
                                                         "multi-label: try --loss focal or asl"),
            (cfg.label_smoothing == 0 or cfg.loss in ("auto", "ce"), f"--label_smoothing smooths cross-entropy; it "
                                                                     f"does not combine with --loss {cfg.loss}"),
            (0 < cfg.llrd <= 1, "--llrd must be in (0, 1] (1 = every layer at --lr_main)"),
            (cfg.reinit_layers >= 0, "--reinit_layers must be 0 or more"),
            (cfg.reinit_layers == 0 or cfg.bert_finetuning, "--reinit_layers needs --bert_finetuning True (a frozen "
                                                            "random layer would stay random)"),
            (0 <= cfg.ema < 1, "--ema must be in [0, 1) (0 = off)")]


def load_data(cfg: Config, whole: bool = False):
    """(names, train LabelledData, valid LabelledData), all files checked before anything heavy starts. Several
    tasks: names are every task's `<task>:<class>` and labels are tuples (tasks.Task). `whole` (--cv, which
    splits it into folds): the checked --train_path unsplit, and None."""
    tasks = load_tasks(cfg) if is_multitask(cfg) else None
    names = load_label_map(cfg.dict_path) if tasks is None else combined_names(tasks)
    check_outputs(cfg, names, tasks)
    loaded, problems = {}, []
    for path in filter(None, (cfg.train_path, cfg.valid_path)):  # both files checked before either is reported
        try:
            loaded[path] = load_labelled_file(path, cfg.text_col, cfg.label_col, names, cfg.multi_label,
                                             cfg.text_col2, tasks)
        except InputError as e:
            problems.append(str(e))
    if problems:
        raise InputError("\n".join(problems))
    train = loaded[cfg.train_path]
    if tasks is not None:
        return names, *split_tasks_data(cfg, train, loaded.get(cfg.valid_path), tasks, whole)
    check_training_data(cfg.train_path, train, names, cfg.multi_label)
    if cfg.teacher:
        check_teacher(cfg, names, bool(cfg.text_col2))
    if cfg.valid_path:
        valid = loaded[cfg.valid_path]
        check_validation_data(cfg.valid_path, train, valid, names, cfg.multi_label)
        return names, train, valid
    if whole:
        return names, train, None
    train_idx, valid_idx = stratified_split(train.labels, cfg.valid_frac, cfg.seed, names, cfg.multi_label)
    return names, train.subset(train_idx), train.subset(valid_idx)


def check_outputs(cfg: Config, names: list, tasks: list) -> None:
    """What the model will output (the classes, or the groups of --label_groups, whose map is read and checked
    here) must make predict.py's columns, each a name of its own; multi-label outputs without commas, which join
    them in the label column."""
    outputs = load_label_groups(cfg.label_groups, names, cfg.multi_label).names if cfg.label_groups else names
    clash = column_clash(prediction_columns(cfg, tasks, outputs))
    if clash:
        raise InputError(clash)
    if cfg.label_groups and cfg.multi_label and any("," in group for group in outputs):
        raise InputError(f"--label_groups {cfg.label_groups}: a group name has a comma; with --multi_label True a "
                         "comma separates the groups in predict.py's label column: rename it")


def load_tasks(cfg: Config) -> list:
    """The Tasks of a multitask run, each label map of -d read and checked."""
    paths = split_option(cfg.dict_path)
    if len(paths) != len(split_option(cfg.label_col)):
        build_tasks(cfg, paths)  # raises the count mismatch in words
    return build_tasks(cfg, [load_label_map(path) for path in paths])


def split_tasks_data(cfg: Config, train, valid, tasks: list, whole: bool = False) -> tuple:
    """load_data's checks and split for several tasks: every task labelled in training, the split stratified by
    each row's first labelled task."""
    check_task_data(cfg.train_path, train, tasks)
    if valid is not None:
        check_task_data(cfg.valid_path, valid, tasks, training=False)
        return train, valid
    if whole:
        return train, None
    train_idx, valid_idx = stratified_split(split_keys(train.labels, tasks), cfg.valid_frac, cfg.seed,
                                            combined_names(tasks), False, warn_absent=False)
    return train.subset(train_idx), train.subset(valid_idx)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv=None) -> int:
    cfg = parse_config(argv)
    check_options(cfg)
    workers = local_worker_count(cfg.parallel and cfg.parallel_mode == "ddp", cfg.device)
    check_repeat_options(cfg, workers or int(os.environ.get("WORLD_SIZE", "1")))
    if workers:
        load_data(cfg)  # bad files are reported once, here, not once per worker
    # one writer per save_path: this process, or the launcher of this process's ranks, holds the lock
    with FolderLock(cfg.save_path, held_by_parent=os.environ.get("RANK", "0") != "0"):
        if workers:
            return launch_local_workers(__file__, sys.argv[1:] if argv is None else argv, workers,
                                        saves_on_signal=True)
        try:
            with StopRequest().installed() as stop:
                if repeated(cfg):  # --seeds, --cv: members one after another, then their summary
                    return train_members(cfg, stop, train, load_data)
                return train(cfg, stop)
        except RunFault as e:  # the run cannot go on: say what the user still has
            raise RunFault(f"{e}; {model_in_place(cfg.save_path)}")


class Phases:
    """Wall time of each part of the command, for the closing line: where a short run's fixed costs go."""
    unclaimed_start = PROCESS_STARTED  # the first run of a process counts its imports (tests run train.main often)

    def __init__(self):
        self.last, self.seconds = time.perf_counter(), {}
        self.started, Phases.unclaimed_start = Phases.unclaimed_start or self.last, None
        if self.last > self.started:
            self.seconds["start-up and imports"] = self.last - self.started

    def mark(self, name: str) -> float:
        """Add the time since the previous mark to `name`; returns it."""
        now = time.perf_counter()
        spent, self.last = now - self.last, now
        self.seconds[name] = self.seconds.get(name, 0.0) + spent
        return spent

    def summary(self) -> str:
        total = time.perf_counter() - self.started
        return f"time: {total:.1f}s in all: " + ", ".join(f"{name} {s:.1f}s ({100 * s / total:.0f}%)"
                                                         for name, s in self.seconds.items())


def train(cfg: Config, stop: StopRequest, data: tuple = None) -> int:
    """Train one process (one rank of several under DDP); PREEMPTED_EXIT if stopped by a signal. `data`: what
    load_data returns, already read (--seeds and --cv members share it)."""
    phases = Phases()
    names, train_data, valid_data = data or load_data(cfg)
    cfg._data_sha256 = data_fingerprint(names, train_data, valid_data)  # --resume checks it is the same
    phases.mark("read and check data")
    run = start_run(cfg)
    seed_everything(cfg.seed)
    model, tokenizer, model_path = build_model(cfg, len(names), run)
    # what validation, the best epoch, calibration and the saved model see: the classes, or their groups
    out_names, valid_labels = attach_read_out(model, cfg, names, valid_data.labels, run)
    phases.mark("load the model")
    train_set = encode_rows(train_data, model, tokenizer, model_path, cfg, run, training=True)
    valid_set = encode_rows(valid_data, model, tokenizer, model_path, cfg, run)
    encode_s = phases.mark("tokenise")
    if cfg.teacher:
        run.print(f"teacher {cfg.teacher}: predicting the {len(train_data.texts)} training rows")
        train_set.teacher_probs = teacher_targets(cfg, train_data, run)
        phases.mark("the teacher's predictions")
    tasks, loss_fn = training_loss(cfg, names, train_data.labels, run)
    training = Training.build(cfg, run, wrap_for_parallel(model, cfg, run), loss_fn, train_set,
                              Collator(tokenizer.pad_token_id or 0, len(names), cfg.multi_label, tasks,
                                       cfg.teacher_weight), stop)
    training.tasks = tasks
    if cfg.label_groups:  # the groups' validation loss is the plain one; the training loss is the classes'
        training.valid_loss_fn = torch.nn.BCEWithLogitsLoss() if cfg.multi_label else torch.nn.CrossEntropyLoss()
    valid_loader = training.loader(BucketBatchSampler(valid_set.lengths(), cfg.batch_size * 4, False, 0,
                                                      run.world_size, run.rank, costs=costs(valid_set)), valid_set)
    print_startup(cfg, run, training, model_path, train_data, valid_data, names, encode_s)
    progress = training.progress = start_or_resume(cfg, run, model, training.optimizer, training.scheduler,
                                                   training.scaler, training.average)
    with RunLog(cfg.save_path, run, cfg.tensorboard, progress.updates or None, progress.epoch) as training.log:
        phases.mark("set up training")
        for epoch in range(progress.epoch, cfg.n_epochs + 1):
            if cfg.early_stop > 0 and progress.stale >= cfg.early_stop:
                run.print(f"early stop: {progress.stale} epoch(s) without a better valid {cfg.metric}")
                break
            stats = training.train_epoch(epoch)
            phases.mark("train")
            if stop.stopping:
                return stopped(run, stop, f"stopped after update {progress.updates}, resumable checkpoint in "
                                          f"{cfg.save_path}/resume")
            with training.validated_weights():
                logits = engine.evaluate(training.model, valid_loader, run, len(valid_set))
                phases.mark("validate")
                record = score_epoch(training, epoch, stats, logits, valid_labels, len(out_names))
                improved = keep_if_best(training, record, logits)
                print_epoch(run, record, improved, training.tasks)
                if improved and run.is_main:
                    save_model(cfg.save_path, model, tokenizer, cfg, out_names, {"temperature": 1.0})
            training.end_epoch(epoch)
            phases.mark("save")
            if stop.stopping:
                return stopped(run, stop, f"stopped after epoch {epoch}")
        with writing(cfg.save_path):
            finish(cfg, run, progress, valid_labels, out_names, training.tasks)
        phases.mark("calibrate and report")
        run.print(phases.summary())
        return 0


def training_loss(cfg: Config, names: list, labels: list, run) -> tuple:
    """(the tasks of a run of several, else None; the training loss), weighted by the training labels' classes."""
    tasks = tasks_from_folder(cfg, names, {}) if is_multitask(cfg) else None
    if tasks:
        return tasks, make_multitask_loss(cfg, tasks, labels, run.device)
    return None, make_loss(cfg, class_counts(labels, len(names), cfg.multi_label), len(labels), run.device)


def updates_per_epoch(n_batches: int, accumulation: int) -> int:
    return -(-n_batches // accumulation)  # the last, shorter accumulation still ends in an update


def start_run(cfg: Config) -> Run:
    """This process's device, precision and rank (runtime.setup_run), and a word when -p True finds one GPU."""
    run = setup_run(cfg.device, cfg.precision)
    if cfg.parallel and run.world_size == 1:
        gpus = torch.cuda.device_count()
        run.print(f"-p True: {gpus} GPU(s) on this machine, training in one process on {run.device}")
    return run


def build_model(cfg: Config, n_classes: int, run):
    """(classifier on run.device, tokenizer, resolved checkpoint path) from --bert_name; --pooling auto becomes
    the pooling chosen (cfg.pooling, so train_config.json records it), and a tokenizer without a pad token pads
    with its end-of-text token, as Hugging Face's own sequence classifiers do."""
    from fast_encoder import fast_training_encoder  # transformers takes seconds to import: only once data is good
    from long_text import check_window_options
    from model import (BertClassifier, choose_pooling, load_pretrained_encoder, load_tokenizer, max_supported_length,
                       reinit_top_layers)
    model_path = resolve_model_path(cfg.bert_name)
    tokenizer = load_tokenizer(model_path)
    encoder = load_pretrained_encoder(model_path)
    if cfg.reinit_layers:
        reinit_top_layers(encoder, cfg.reinit_layers, cfg.pooling == "pooler")
    limit, why = max_supported_length(encoder, tokenizer)
    if cfg.max_length > limit:
        raise InputError(f"--max_length {cfg.max_length}: {cfg.bert_name} supports at most {limit} tokens ({why})")
    if cfg.long_text == "windows":
        check_window_options(tokenizer, cfg.max_length, cfg.stride, bool(cfg.text_col2))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked: any real id will do
    if cfg.pooling == "auto":
        cfg.pooling, why = choose_pooling(encoder)
        run.print(f"pooling auto -> {cfg.pooling}: {why}")
    model = BertClassifier(fast_training_encoder(encoder), n_classes, cfg.pooling, cfg.dropout_p, cfg.window_pool)
    if not cfg.bert_finetuning:
        model.freeze_encoder()
    elif cfg.freeze_word_embeddings and encoder.get_input_embeddings() is not None:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    if cfg.pooling != "pooler" and getattr(encoder, "pooler", None) is not None:
        encoder.pooler.requires_grad_(False)  # unused by this pooling: DDP would wait for its gradients forever
    return model.to(run.device), tokenizer, model_path


def attach_read_out(model, cfg: Config, names: list, valid_labels: list, run) -> tuple:
    """--label_groups: the model's outputs in evaluation become the groups of `names` (label_groups.py); returns
    (output names, validation labels): the groups and the rows' groups, or `names` and `valid_labels` as given."""
    if not cfg.label_groups:
        return names, valid_labels
    groups = load_label_groups(cfg.label_groups, names, cfg.multi_label)
    model.read_out = GroupReadOut(groups, cfg.multi_label).to(run.device)
    run.print(f"label groups ({cfg.label_groups}): the head learns {len(names)} classes; validation, calibration "
              f"and predictions use their {len(groups.names)} groups ({', '.join(groups.names[:8])}"
              f"{', ...' if len(groups.names) > 8 else ''})")
    return groups.names, groups.group_labels(valid_labels, cfg.multi_label)


def encode_rows(data, model, tokenizer, model_path: str, cfg: Config, run, training: bool = False):
    """Token ids of every row (of every pair), tokenised once; with --boost, the frozen encoder's cached sentence
    vectors. With --long_text windows, the windows of every row (`training`: drawn up to --max_windows)."""
    from model import takes_token_types
    token_types = takes_token_types(unwrap(model).encoder, tokenizer)
    if cfg.long_text == "windows":
        return encode_windows(data, model, tokenizer, model_path, cfg, run, training, token_types)
    ids, types = tokenize(tokenizer, data.texts, cfg.max_length, data.texts2, token_types)
    if not cfg.boost:
        return EncodedDataset(ids, data.labels, token_type_ids=types)
    from boost_cache import cached_sentence_vectors
    return EncodedDataset(labels=data.labels, features=cached_sentence_vectors(
        model, tokenizer, data.texts, ids, cfg, model_path, run, texts2=data.texts2, token_type_ids=types))


def encode_windows(data, model, tokenizer, model_path: str, cfg: Config, run, training: bool, token_types: bool):
    """encode_rows for --long_text windows: a WindowedDataset of every row's windows (or of their cached vectors)."""
    from long_text import WindowedDataset, tokenize_windows
    windows, types = tokenize_windows(tokenizer, data.texts, cfg.max_length, cfg.stride, data.texts2, token_types,
                                      data.rows, cfg.train_path if training else cfg.valid_path or cfg.train_path)
    cap = cfg.max_windows if training else 0
    if not cfg.boost:
        return WindowedDataset(windows, data.labels, token_type_ids=types, train_cap=cap, seed=cfg.seed)
    from boost_cache import cached_sentence_vectors
    # one cache entry per window: keyed by its document's text(s) and its place in the document
    flat_ids = [w for doc in windows for w in doc]
    flat_types = None if types is None else [t for doc in types for t in doc]
    keys = [f"{text}\x00window {j}" for text, doc in zip(data.texts, windows) for j in range(len(doc))]
    keys2 = None if data.texts2 is None else [t2 for t2, doc in zip(data.texts2, windows) for _ in doc]
    vectors = cached_sentence_vectors(model, tokenizer, keys, flat_ids, cfg, model_path, run, texts2=keys2,
                                      token_type_ids=flat_types)
    features = list(torch.split(vectors, [len(doc) for doc in windows]))
    return WindowedDataset(labels=data.labels, features=features, train_cap=cap, seed=cfg.seed)


def wrap_for_parallel(model: torch.nn.Module, cfg: Config, run: Run) -> torch.nn.Module:
    """DDP under several processes, nn.DataParallel with -p True --parallel_mode dp on several GPUs, else as is."""
    if run.world_size > 1:
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if cfg.parallel and cfg.parallel_mode == "dp" and torch.cuda.device_count() > 1:
        return torch.nn.DataParallel(model)
    return model


@dataclass
class Training:
    """What the epochs of one run share: the model with its optimizer, scheduler and gradient scaler, where training
    stands, and the plumbing around the loop (resumable saves, stop signals, a smaller batch on out-of-memory)."""
    cfg: Config
    run: Run
    model: torch.nn.Module  # wrapped for DDP or DataParallel where asked; unwrap(model) is what is saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    train_set: EncodedDataset
    sampler: BucketBatchSampler
    collate: Collator
    stop: StopRequest
    progress: Progress = None
    log: RunLog = None  # save_path/logs/, from the first epoch on
    parts: int = 1  # micro-batches per batch; doubled each time a step runs out of memory
    split: SplitBatchSampler = None  # this epoch's batches, cut into `parts`
    tasks: list = None  # several tasks (tasks.Task) on one encoder, else None
    average: engine.WeightAverage = None  # --ema: the averaged weights, validated and saved
    valid_loss_fn: torch.nn.Module = None  # --label_groups: the groups' loss in validation, else loss_fn

    def validated_weights(self):
        """The weights to validate and save: --ema's average, swapped in for the block; else the trained ones."""
        return self.average.applied() if self.average else contextlib.nullcontext()

    @classmethod
    def build(cls, cfg, run, model, loss_fn, train_set, collate, stop) -> "Training":
        """AdamW, linear warm-up and decay over every update of the run, and fp16's gradient scaler."""
        sampler = BucketBatchSampler(train_set.lengths(), cfg.batch_size, True, cfg.seed, run.world_size, run.rank,
                                     costs=costs(train_set))
        optimizer = engine.build_optimizer(model, cfg.lr_main, cfg.lr, cfg.weight_decay, run.device, cfg.llrd)
        total = sum(updates_per_epoch(sampler.batches_in_epoch(epoch), cfg.gradient_accumulation_steps)
                    for epoch in range(1, cfg.n_epochs + 1))
        scheduler = engine.build_scheduler(optimizer, int(cfg.warmup_ratio * total), total)
        scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
        average = engine.WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        return cls(cfg, run, model, optimizer, scheduler, scaler, loss_fn, train_set, sampler, collate, stop,
                   average=average)

    def loader(self, batch_sampler, dataset: EncodedDataset = None) -> torch.utils.data.DataLoader:
        """A loader of `dataset` (default: the training set) in the batches of `batch_sampler`."""
        # a generator of its own keeps the loader from drawing on the global RNG, which dropout uses: resumable
        return torch.utils.data.DataLoader(
            dataset if dataset is not None else self.train_set, batch_sampler=batch_sampler,
            collate_fn=self.collate, num_workers=self.cfg.num_workers, pin_memory=self.run.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed))

    def train_epoch(self, epoch: int) -> dict:
        """engine.train_one_epoch from where the epoch stands; out of memory halves the batch and goes on."""
        done = self.progress.batches_done  # whole batches of this epoch whose optimizer update is finished
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # --long_text windows: which run of windows each document gives
        while True:
            self.sampler.set_epoch(epoch, skip_batches=done)
            self.split = SplitBatchSampler(self.sampler, self.parts, done)
            accum = self.cfg.gradient_accumulation_steps
            log = EpochLog(self.run, self.cfg.log_every, f"epoch {epoch}/{self.cfg.n_epochs}", epoch,
                           self.progress.updates, (done // accum, updates_per_epoch(done + len(self.sampler), accum)),
                           self.log)
            try:
                stats = engine.train_one_epoch(
                    self.model, self.loader(self.split), self.optimizer, self.scheduler, self.scaler, self.loss_fn,
                    self.run, accum * self.parts, self.cfg.max_grad_norm, log, self.after_update)
                break
            except engine.Diverged:
                raise RunFault(diverged(self.cfg, self.run, f"update {self.progress.updates} of epoch {epoch}",
                                        "the training loss or gradient norm is not finite"))
            except OOM_ERRORS:
                if self.run.world_size > 1:
                    raise  # the other ranks cannot be told to re-split their batches: stop rather than hang
            # out of the except block, the failed step's tensors are free; its partial gradients are dropped
            done = self.split.updated
            self.halve_batch(epoch, done)
        for key in self.progress.totals:
            self.progress.totals[key] += stats[key]
        return stats

    def halve_batch(self, epoch: int, done: int) -> None:
        """Half the batch, twice the accumulation: the same sentences per update. At a batch of 1, stop."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.run.device.type == "cuda":
            torch.cuda.empty_cache()
        batch, accum = self.cfg.batch_size, self.cfg.gradient_accumulation_steps
        size = -(-batch // self.parts)
        if size <= 1:
            raise InputError(f"out of memory on {self.run.device} with a batch of 1 sentence; lower --max_length "
                             "or use a smaller --bert_name")
        self.parts *= 2
        self.run.print(f"out of memory on {self.run.device} at batch size {size}: batch size -> "
                       f"{-(-batch // self.parts)}, gradient accumulation {accum * self.parts // 2} -> "
                       f"{accum * self.parts} (still {batch * accum} sentences per update); "
                       f"epoch {epoch} goes on from batch {done + 1}")

    def after_update(self, micro_steps: int) -> bool:
        """Called by the loop after each optimizer update; saves every --save_every updates. True: stop now."""
        self.progress.updates += 1
        self.progress.batches_done = self.split.on_update(micro_steps)
        if self.average:
            self.average.update()
        stopping = self.stop.agreed(self.run)
        if stopping or (self.cfg.save_every > 0 and self.progress.updates % self.cfg.save_every == 0):
            self.save_resumable()
        return stopping

    def end_epoch(self, epoch: int) -> None:
        """metrics.json with the history so far; the next epoch starts from its first batch; a resumable
        checkpoint if asked for or stopping."""
        if self.run.is_main:
            with writing(self.cfg.save_path):
                write_json(os.path.join(self.cfg.save_path, "metrics.json"), {
                    "best_epoch": self.progress.best_epoch, "metric": self.cfg.metric,
                    "epochs": self.progress.history})
        self.progress.epoch, self.progress.batches_done = epoch + 1, 0
        if self.stop.agreed(self.run) or self.cfg.save_every > 0:
            self.save_resumable()

    def save_resumable(self) -> None:
        """A resumable checkpoint, never of a model that diverged since the last look at the loss."""
        if not all(torch.isfinite(p).all() for p in unwrap(self.model).parameters()):
            raise RunFault(diverged(self.cfg, self.run, f"update {self.progress.updates}", "the weights are not "
                                    "finite"))
        with writing(self.cfg.save_path):
            save_resumable(self.cfg.save_path, self.run, unwrap(self.model), self.optimizer, self.scheduler,
                           self.scaler, self.progress, self.cfg, self.average)


def costs(dataset) -> list:
    """Windows per document (--long_text windows), which batch sizes count; None: rows count."""
    return dataset.costs() if hasattr(dataset, "costs") else None


def diverged(cfg: Config, run: Run, where: str, what: str) -> str:
    """The one line of a diverged run: where, and the likely causes."""
    fp16 = ", or fp16 without a working gradient scaler (try --precision bf16 or fp32)" if run.precision == "fp16" \
        else ""
    return (f"training diverged at {where}: {what}; likely a learning rate too high (--lr_main {cfg.lr_main}, "
            f"--lr {cfg.lr}){fp16}. Nothing of this run after the last good epoch was saved")


def split_name(cfg: Config) -> str:
    """How the validation rows were chosen, for the start-up block."""
    return f", a fold of {cfg.cv}" if cfg.cv else f", split {cfg.valid_frac}"


def print_startup(cfg: Config, run: Run, training: Training, model_path: str, train_data, valid_data, names: list,
                  encode_s: float) -> None:
    """The derived numbers a user checks before waiting for an epoch: rows, model, devices, batch sizes, updates."""
    n_params = sum(p.numel() for p in unwrap(training.model).parameters() if p.requires_grad)
    per_update = cfg.batch_size * run.world_size * cfg.gradient_accumulation_steps
    updates = updates_per_epoch(training.sampler.batches_in_epoch(1), cfg.gradient_accumulation_steps)
    run.print(f"train {len(train_data.texts)} rows, validation {len(valid_data.texts)} rows, {len(names)} classes "
              f"({cfg.train_path}{' + ' + cfg.valid_path if cfg.valid_path else split_name(cfg)})\n"
              f"{'pairs ' + cfg.text_col + ' + ' + cfg.text_col2 + ', ' if cfg.text_col2 else ''}"
              f"model {cfg.bert_name} ({model_path}), pooling {cfg.pooling}, {n_params / 1e6:.1f}M trainable "
              f"parameters{', encoder frozen' if not cfg.bert_finetuning else ''}\n"
              f"device {run.device} x{run.world_size}, precision {run.precision}, batch {cfg.batch_size} per process"
              f" x {run.world_size} process(es) x {cfg.gradient_accumulation_steps} accumulation = {per_update} per "
              f"update, {updates} updates per epoch, {cfg.n_epochs} epoch(s); data encoded in {encode_s:.1f}s")
    if cfg.long_text == "windows":
        from long_text import window_summary
        run.print(f"long texts: windows of {cfg.max_length} tokens overlapping by {cfg.stride}, logits pooled by "
                  f"{cfg.window_pool}, batches of at most {cfg.batch_size} windows; "
                  + window_summary(training.train_set.windows or training.train_set.features, cfg.max_windows))
    for k, task in enumerate(training.tasks or ()):
        labelled = sum(label[k] is not None for label in train_data.labels)
        run.print(f"task {task.name}: {len(task.classes)} classes{', multi-label' if task.multi_label else ''}, "
                  f"loss weight {task.weight:g}, {labelled} of {len(train_data.labels)} training rows labelled")
    if run.device.type == "cpu":
        run.print(cpu_threads.describe())


def score_epoch(training: Training, epoch: int, stats: dict, logits: torch.Tensor, labels: list,
                n_classes: int) -> dict:
    """The epoch's record, added to the history and to log.csv: train loss, validation metrics, throughput."""
    run, cfg = training.run, training.cfg
    loss_fn = training.valid_loss_fn or training.loss_fn
    if training.tasks:
        metrics = task_metrics(training.tasks, logits, labels, loss_fn.cpu())
    else:
        metrics = compute_metrics(logits, labels, loss_fn.cpu(), cfg.multi_label, n_classes)
    loss_fn.to(run.device)
    record = {"epoch": epoch, "train_loss": stats["loss"], **{f"valid_{k}": v for k, v in metrics.items()},
              "train_samples_per_s": stats["samples"] / stats["seconds"],
              "train_tokens_per_s": stats["tokens"] / stats["seconds"]}
    training.progress.history.append(record)
    training.log.epoch_row(record, training.progress.updates, training.optimizer.param_groups[0]["lr"])
    return record


def task_metrics(tasks: list, logits: torch.Tensor, labels: list, loss_fn) -> dict:
    """Each task's metrics on the rows labelled for it (`<task>_accuracy`...), and their means (`accuracy`...),
    which pick the best epoch."""
    from tasks import task_labels
    metrics = {}
    for k, (task, loss) in enumerate(zip(tasks, loss_fn.losses)):
        rows, mine = task_labels(labels, k)
        if not rows:
            continue
        scores = compute_metrics(logits[rows, task.start:task.stop], mine, loss, task.multi_label, len(task.classes))
        metrics.update({f"{task.name}_{key}": value for key, value in scores.items()})
    scored = [t for t in tasks if f"{t.name}_loss" in metrics]
    for key in ("loss", "accuracy", "macro_f1"):
        metrics[key] = sum(metrics[f"{t.name}_{key}"] for t in scored) / len(scored)
    return metrics


def print_epoch(run: Run, record: dict, improved: bool, tasks: list = None) -> None:
    each = "".join(f" | {t.name}: accuracy {record[f'valid_{t.name}_accuracy']:.4f} macro-F1 "
                   f"{record[f'valid_{t.name}_macro_f1']:.4f}" for t in tasks or () if f"valid_{t.name}_loss" in record)
    run.print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} | valid loss {record['valid_loss']:.4f} "
              f"accuracy {record['valid_accuracy']:.4f} macro-F1 {record['valid_macro_f1']:.4f}"
              f"{' (means of the tasks)' if tasks else ''}{each} | "
              f"{record['train_samples_per_s']:.1f} samples/s{' | best so far, saved' if improved else ''}")


def keep_if_best(training: Training, record: dict, logits: torch.Tensor) -> bool:
    """Whether this epoch beats the best so far (then remembered with its logits)."""
    progress, cfg = training.progress, training.cfg
    if not math.isfinite(record["valid_loss"]):  # never the best epoch, never saved
        raise RunFault(diverged(cfg, training.run, f"the validation of epoch {record['epoch']}",
                                f"the validation loss is {record['valid_loss']}"))
    value = record[f"valid_{cfg.metric}"]
    improved = is_better(cfg.metric, value, progress.best)
    if improved:
        progress.best, progress.best_epoch, progress.best_logits, progress.stale = value, record["epoch"], logits, 0
    else:
        progress.stale += 1
    return improved


def stopped(run: Run, stop: StopRequest, what: str) -> int:
    """A stop signal arrived: say where training stopped and how to go on. Ctrl-C exits 130, as an interrupted
    command does; a cluster's signals exit PREEMPTED_EXIT, which slurm/ scripts requeue."""
    ctrl_c = stop.signal == "SIGINT"
    run.print(f"{'Ctrl-C' if ctrl_c else 'preemption signal'}: {what}; continue with --resume auto")
    cleanup_run()
    return INTERRUPTED_EXIT if ctrl_c else PREEMPTED_EXIT


def finish(cfg: Config, run: Run, progress: Progress, labels: list, names: list, tasks: list = None) -> None:
    """The best epoch's summary; its temperature, multi-label thresholds and save_path/report/ (rank 0)."""
    best = progress.history[progress.best_epoch - 1]
    totals = progress.totals
    run.print(f"done: best epoch {progress.best_epoch} | valid accuracy {best['valid_accuracy']:.4f} "
              f"macro-F1 {best['valid_macro_f1']:.4f} loss {best['valid_loss']:.4f} | "
              f"throughput {totals['samples'] / totals['seconds']:.1f} samples/s, "
              f"{totals['tokens'] / totals['seconds']:.0f} tokens/s | model saved in {cfg.save_path}")
    if run.is_main and tasks:
        from report import multitask_report
        multitask_report(cfg.save_path, progress.best_logits.numpy(), labels, tasks, progress.history, cfg.metric,
                         progress.best_epoch, run.print, keep_probabilities=repeated(cfg))
    elif run.is_main:
        from report import training_report
        training_report(cfg.save_path, progress.best_logits.numpy(), labels, names, cfg.multi_label,
                        progress.history, cfg.metric, progress.best_epoch, run.print,
                        keep_probabilities=repeated(cfg))  # a member: an ensemble averages them into its report
    cleanup_run()


if __name__ == "__main__":
    run_cli(main, whole_process=True)
