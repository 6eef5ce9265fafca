"""Predict every .csv, .tsv, .jsonl, .parquet and .txt file of a folder with a model trained by train.py.

    python predict.py -f inputs/ -d classes.json -p False
    python predict.py -f big_folder/ --save_path runs/emotions --out_dir preds/ --batch_size 64
    python predict.py -f test_folder/ -d classes.json --report True   # labelled CSVs: + out_dir/report_<stem>/
    python predict.py -f big_folder/ -d classes.json -p True      # every GPU: rows shared out, output in order

Each input file gets a predictions file in --out_dir (CSV, or --out_format jsonl or parquet): the sentence (both
texts for a pair model), the predicted class in `label` (multi-label: the chosen classes joined by commas) and one
column per class, named as the class, with its probability. A table input (.csv, .tsv, .jsonl, .parquet) is read
from its text column (and --text_col2 for pairs); a .txt input has one sentence per line. Files are streamed in
chunks, so memory stays flat whatever their size, and rows keep their input order. A file already predicted
by the same model and unchanged since is skipped unless --overwrite. A bad file is reported and skipped; the
exit code is then 1. The model, its tokenizer, label map and settings all come from --save_path; an ensemble
folder (train.py --ensemble True) gives the mean of its members' calibrated probabilities.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass

import cpu_threads

cpu_threads.configure()  # before torch loads: OpenMP reads its thread count and wait policy once, at load time
import numpy as np
import torch

from calibrate import decide, probabilities
from checkpoint import atomic_path, load_model, read_label_groups, sha256_file, write_json
from config import PRECISIONS, PREDICT_BATCH_SIZE, Config, InputError, RunFault, build_parser, os_problem, run_cli
from dataset import (PREDICT_EXTENSIONS, SURROGATE_RE, Collator, EncodedDataset, column_clash, has_column,
                     iter_predict_file, load_label_map, load_labelled_file, prediction_columns, tokenize)
from ensemble import Ensemble, is_ensemble, load_ensemble
from long_text import check_window_options, window_spec
from tasks import combined_names, is_multitask, split_option, task_labels, task_probabilities, tasks_from_folder
from tables import PredictionWriter
from runtime import cleanup_run, launch_local_workers, local_worker_count, pick_precision, setup_run

CHUNK_ROWS = 8192  # rows read, sorted by length and predicted at a time: bounds memory on huge files
RUNTIME_FIELDS = ("input_dir", "dict_path", "parallel", "save_path", "out_dir", "device", "precision",
                  "batch_size", "num_workers", "overwrite", "allow_empty", "report", "out_format")
STATE_FILE = "predict_state.json"  # which inputs are done, and with which model: not a .csv on purpose


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser("predict.py", ("predict", "both"), __doc__.split("\n\n")[0])
    parser.set_defaults(batch_size=PREDICT_BATCH_SIZE)
    # Model settings (max_length, text column) default to the training run's; only flags given here override.
    for action in parser._actions:
        if action.dest not in RUNTIME_FIELDS and action.dest != "help":
            action.default = argparse.SUPPRESS
    return parser.parse_args(argv)


@torch.inference_mode()
def predict_probabilities(model, tokenizer, texts: list, max_length: int, batch_size: int, run,
                          multi_label: bool, temperature: float = 1.0, stats: dict = None,
                          texts2: list = None, windows=None, tasks: list = None) -> np.ndarray:
    """(len(texts), n_classes) probabilities in input order (of pairs with texts2); batches are sorted by length
    and padded per batch. With `windows` (long_text.Windows), every window of every text is a row of the
    batches, and each text's probabilities come from its windows' pooled logits. With `tasks` (several), each
    task's block of outputs gets its own softmax or sigmoid and temperature (multi_label, temperature unused).

    `stats["tokens"]`, when given, is increased by the number of tokens read (for the tokens/s report). An
    Ensemble gives the mean of its members' probabilities, each member at its own temperature (and tasks)."""
    if isinstance(model, Ensemble):
        return np.mean([predict_probabilities(m.model, m.tokenizer, texts, max_length, batch_size, run, multi_label,
                                              m.temperature, stats, texts2, windows, m.tasks) for m in model.members],
                       axis=0)
    token_types = model.takes_token_types(tokenizer)
    if windows is None:
        ids, types = tokenize(tokenizer, texts, max_length, texts2, token_types)
    else:
        from long_text import tokenize_windows
        per_text, per_text_types = tokenize_windows(tokenizer, texts, max_length, windows.stride, texts2, token_types)
        counts = torch.tensor([len(doc) for doc in per_text])
        ids = [w for doc in per_text for w in doc]
        types = None if per_text_types is None else [t for doc in per_text_types for t in doc]
    if stats is not None:
        stats["tokens"] = stats.get("tokens", 0) + sum(len(x) for x in ids)
    def to_probs(logits):
        return task_probabilities(logits, tasks) if tasks else probabilities(logits, multi_label, temperature)
    if windows is None:
        out = np.zeros((len(texts), model.n_classes), dtype=np.float32)
        for rows, logits in batched_logits(model, tokenizer, ids, types, batch_size, run):
            out[rows] = to_probs(logits).cpu().numpy()
        return out
    from long_text import pool_window_logits
    window_logits = torch.zeros((len(ids), model.n_classes))
    for rows, logits in batched_logits(model, tokenizer, ids, types, batch_size, run):
        window_logits[torch.as_tensor(rows)] = logits.float().cpu()
    pooled = pool_window_logits(window_logits, counts, windows.pool)
    return to_probs(pooled).numpy()


def batched_logits(model, tokenizer, ids: list, types: list, batch_size: int, run):
    """(row positions, logits) of `ids` in batches of similar length, each padded to its longest row."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    dataset = EncodedDataset(ids, token_type_ids=types)
    collate = Collator(tokenizer.pad_token_id or 0)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([dataset[int(i)] for i in rows])  # padded to its longest row
        cpu_threads.adapt()  # fewer threads while another process computes on our CPUs
        with run.autocast():
            logits = model(input_ids=batch["input_ids"].to(run.device),
                           attention_mask=batch["attention_mask"].to(run.device),
                           token_type_ids=batch["token_type_ids"].to(run.device) if types is not None else None)
        yield rows, logits


def predict_sharded(model, tokenizer, texts: list, cfg: Config, run, temperature: float,
                    counts: dict = None, texts2: list = None) -> np.ndarray:
    """Probabilities of `texts` (pairs with texts2) in input order; under several processes each predicts one
    contiguous share."""
    def share(lo, hi):
        return predict_probabilities(model, tokenizer, texts[lo:hi], cfg.max_length, cfg.batch_size, run,
                                     cfg.multi_label, temperature, counts, None if texts2 is None else texts2[lo:hi],
                                     window_spec(cfg), model_tasks(cfg))
    if run.world_size == 1:
        return share(0, len(texts))
    import torch.distributed as dist
    bounds = [len(texts) * r // run.world_size for r in range(run.world_size + 1)]
    mine = share(bounds[run.rank], bounds[run.rank + 1])
    shares = [None] * run.world_size
    dist.all_gather_object(shares, mine)  # rank order is input order
    return np.concatenate(shares)


def load_any_model(folder: str, device, precision: str = "auto"):
    """(model, tokenizer, cfg, names, extra) of a train.py folder (PyTorch), of an export.py folder (run by
    onnxruntime on the CPU: same CSVs, sorting, batching and reports; precision int8 takes its int8 graph) or of an
    ensemble folder (--ensemble True: the model is an ensemble.Ensemble)."""
    if os.path.isfile(os.path.join(folder, "export.json")):
        from onnx_runner import load_export
        loaded = load_export(folder, int8=precision == "int8")
    elif precision == "int8":
        raise InputError(f"{folder}: --precision int8 runs the int8 graph of an ONNX export (python export.py "
                         "--quantize int8); this is a PyTorch model folder: use auto, fp32 or bf16")
    elif is_ensemble(folder):
        loaded = load_ensemble(folder, device)
    else:
        loaded = load_model(folder, device)
    attach_settings(folder, *loaded[2:])
    return loaded


def follow_training_precision(run, cfg: Config, folder: str, asked: str) -> None:
    """The precision predictions run in. An ONNX export runs its fp32 graph (or int8), whatever was asked. Asked
    for auto, a model trained with an explicit --precision (fp32, bf16) predicts in it where this device has it:
    its temperature and thresholds were fitted on logits of that precision."""
    if os.path.isfile(os.path.join(folder, "export.json")):
        if run.precision != "int8":
            run.precision = "fp32"  # autocast does not reach onnxruntime: the summary says what ran
    elif asked == "auto" and cfg.precision not in ("auto", "int8", run.precision):
        with contextlib.suppress(InputError):  # not on this device (fp16 trained on a GPU, predicted on a CPU)
            run.precision = pick_precision(cfg.precision, run.device)


def model_tasks(cfg: Config) -> list:
    """The tasks (tasks.Task) of a multitask model, calibrated, else None; kept on cfg once loaded."""
    return getattr(cfg, "_tasks", None)


def attach_settings(folder: str, cfg: Config, names: list, extra: dict) -> None:
    """Keep on cfg what the model folder holds beside its options: a multitask model's tasks (with their
    temperatures and thresholds, for model_tasks), and with --label_groups the classes behind its groups."""
    cfg._tasks = tasks_from_folder(cfg, names, extra) if is_multitask(cfg) else None
    cfg._label_groups = read_label_groups(folder)


def load_truth(path: str, cfg: Config, names: list, tasks: list = None):
    """The labelled rows of `path` (dataset.LabelledData) as the model scores them: with --label_groups, the file
    holds the classes the model learnt (as training files do) and the rows get their groups."""
    groups = getattr(cfg, "_label_groups", None)
    truth = load_labelled_file(path, cfg.text_col, cfg.label_col, groups.classes if groups else names,
                               cfg.multi_label, cfg.text_col2, tasks)
    if groups:
        truth.labels = groups.group_labels(truth.labels, cfg.multi_label)
    return truth


def decided_labels(probs: np.ndarray, cfg: Config, names: list, extra: dict) -> list:
    """The predicted labels as predictions files write them: one column (one task), or one per task; each a string
    per row, the classes of a multi-label row joined by commas."""
    tasks = model_tasks(cfg)
    parts = [(probs, names, cfg.multi_label, extra.get("thresholds"))] if not tasks else \
        [(probs[:, t.start:t.stop], t.classes, t.multi_label, t.thresholds) for t in tasks]
    columns = []
    for block, classes, multi_label, thresholds in parts:
        chosen = decide(block, multi_label, thresholds, cfg.allow_empty)
        columns.append([",".join(c) if multi_label else c for c in label_names(chosen, classes, multi_label)])
    return columns


def label_names(chosen: np.ndarray, names: list, multi_label: bool) -> list:
    """calibrate.decide's choices as class names: one per row, or (multi-label) a list per row."""
    if multi_label:
        return [[names[j] for j in np.flatnonzero(row)] for row in chosen]
    return [names[j] for j in chosen]


# ------------------------------------------------------------------------------------------------ Python API
@dataclass
class Predictions:
    """What `Classifier.predict` returns: calibrated probabilities (rows x classes, in `classes` order) and the
    chosen labels (names; multi-label: a list of names per row, thresholds and fallback applied). A model of
    several tasks: `labels` maps each task to its labels, and the probabilities' columns are every task's
    classes, in `Classifier.classes` order (`<task>:<class>`)."""
    probabilities: np.ndarray
    labels: list


class Classifier:
    """A model folder of train.py, ready to predict from Python with the numbers predict.py writes:

        clf = predict.load_classifier("saved_model")
        out = clf.predict(["I love it", "This is awful"])
        out.probabilities, out.labels, clf.classes
    """

    def __init__(self, model, tokenizer, cfg: Config, classes: list, extra: dict, run):
        self.model, self.tokenizer, self.cfg, self.classes, self.extra, self.run = \
            model, tokenizer, cfg, classes, extra, run

    def predict(self, texts: list, texts2: list = None, batch_size: int = None) -> Predictions:
        """Predictions for `texts` (pairs with texts2, for a model trained with --text_col2), in input order;
        batches are sorted by length inside."""
        texts, texts2 = api_texts(texts, "texts"), None if texts2 is None else api_texts(texts2, "texts2")
        if batch_size is not None:
            check_batch_size(batch_size)
        if bool(self.cfg.text_col2) != (texts2 is not None):
            raise InputError("this model reads pairs of texts: pass texts2" if self.cfg.text_col2 else
                             "this model reads single texts: texts2 must be None")
        if texts2 is not None and len(texts2) != len(texts):
            raise InputError(f"texts2 has {len(texts2)} entries for {len(texts)} texts")
        probs = predict_probabilities(self.model, self.tokenizer, list(texts), self.cfg.max_length,
                                      batch_size or self.cfg.batch_size, self.run, self.cfg.multi_label,
                                      self.extra.get("temperature", 1.0), texts2=texts2,
                                      windows=window_spec(self.cfg), tasks=model_tasks(self.cfg))
        if tasks := model_tasks(self.cfg):  # several tasks: labels by task
            return Predictions(probs, {t.name: label_names(decide(probs[:, t.start:t.stop], t.multi_label,
                                                                  t.thresholds, self.cfg.allow_empty),
                                                           t.classes, t.multi_label) for t in tasks})
        chosen = decide(probs, self.cfg.multi_label, self.extra.get("thresholds"), self.cfg.allow_empty)
        return Predictions(probs, label_names(chosen, self.classes, self.cfg.multi_label))


def api_texts(texts, name: str) -> list:
    """The Python API's texts: one string, or a list (tuple) of strings; anything else is one InputError."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"{name}: expected a string or a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{name}[{i}]: expected a string, got {type(text).__name__}")
        if found := SURROGATE_RE.search(text):
            raise InputError(f"{name}[{i}]: lone surrogate U+{ord(found.group()):04X} at position {found.start() + 1}"
                             ", which no tokenizer reads")
    return list(texts)


def check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size {batch_size!r}: must be an integer of at least 1")


def load_classifier(save_path: str = "saved_model", device: str = "auto", precision: str = "auto",
                    batch_size: int = PREDICT_BATCH_SIZE, allow_empty: bool = False) -> Classifier:
    """The model in `save_path` (checked against its manifest) on `device` in `precision`, as predict.py's flags
    choose them."""
    if not isinstance(save_path, str) or not isinstance(device, str):
        raise InputError("save_path and device must be strings (a folder; auto, cpu, cuda or cuda:N)")
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    check_batch_size(batch_size)
    run = setup_run(device, precision)
    model, tokenizer, cfg, classes, extra = load_any_model(save_path, run.device, run.precision)
    follow_training_precision(run, cfg, save_path, precision)
    cfg.batch_size, cfg.allow_empty = batch_size, allow_empty
    return Classifier(model, tokenizer, cfg, classes, extra, run)


# ------------------------------------------------------------------------------------------------ the folder
def output_names(files: list, out_format: str = "csv") -> dict:
    """input file -> predictions file name: stem.<format>, or e.g. stem.txt.csv when stem.csv is also an input."""
    ext = f".{out_format}"
    stems = {}
    for name in files:
        stems.setdefault(os.path.splitext(name)[0], []).append(name)
    out = {}
    for stem, group in stems.items():
        for name in group:
            out[name] = f"{stem}{ext}" if len(group) == 1 or name.lower().endswith(ext) else f"{name}{ext}"
    taken = {}
    for name, out_name in out.items():  # a.txt -> a.txt.csv beside an input named a.txt.csv: one would be lost
        if out_name in taken:
            raise InputError(f"{taken[out_name]} and {name}: both would be predicted into {out_name}; "
                             "rename one of them")
        taken[out_name] = name
    return out


def file_signature(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def predict_file(path: str, out_path: str, model, tokenizer, cfg: Config, names: list, run, extra: dict,
                 keep_probs: list = None) -> dict:
    """Stream `path` through the model into `out_path` (written to a temporary file, then renamed);
    `keep_probs` collects the probability chunks for --report."""
    temperature = extra.get("temperature", 1.0)
    tasks = model_tasks(cfg)
    n_rows, counts = 0, {"tokens": 0}
    skipped = [0]
    started = time.perf_counter()
    # every rank reads the file and predicts its share of each chunk; rank 0 alone writes
    with atomic_path(out_path) if run.is_main else contextlib.nullcontext(os.devnull) as tmp, \
            PredictionWriter(tmp, cfg.out_format if run.is_main else "csv",
                             prediction_columns(cfg, tasks, names)) as writer:
        for _, texts, texts2 in iter_predict_file(path, cfg.text_col, CHUNK_ROWS, skipped, cfg.text_col2):
            probs = predict_sharded(model, tokenizer, texts, cfg, run, temperature, counts, texts2)
            if keep_probs is not None:
                keep_probs.append(probs)
            writer.write([texts] + ([texts2] if texts2 is not None else []) + decided_labels(probs, cfg, names, extra),
                         probs)
            n_rows += len(texts)
        if n_rows == 0:
            raise InputError(f"{path}: no sentences to predict")
    if skipped[0] and run.is_main:
        print(f"warning: {path}: skipped {skipped[0]} blank row(s)", file=sys.stderr)
    return {"rows": n_rows, "tokens": counts["tokens"], "seconds": time.perf_counter() - started}


def file_report(path: str, folder: str, probs: np.ndarray, labels: list, cfg: Config, names: list,
                extra: dict) -> None:
    """--report: the labels of `path` against the predictions just written for it, as train.py's report."""
    from report import write_report
    if len(labels) != len(probs):
        raise InputError(f"{path}: {len(labels)} labelled rows but {len(probs)} predicted ones")
    if tasks := model_tasks(cfg):  # each task whose column the file has, on the rows labelled for it
        for k, task in enumerate(t for t in tasks if has_column(path, t.name)):
            rows, mine = task_labels(labels, k)
            if not rows:
                print(f"{os.path.basename(path)}: no row labelled in '{task.name}', no report for it")
                continue
            metrics = write_report(os.path.join(folder, task.name), probs[rows, task.start:task.stop], mine,
                                   task.classes, task.multi_label, task.thresholds, cfg.allow_empty,
                                   title=f"{os.path.basename(path)}, {task.name}")
            print(f"{os.path.basename(path)}, {task.name}: accuracy {metrics['accuracy']:.4f} macro-F1 "
                  f"{metrics['macro_f1']:.4f} ECE {metrics['ece']:.4f} -> report in {os.path.join(folder, task.name)}")
        return
    metrics = write_report(folder, probs, labels, names, cfg.multi_label, extra.get("thresholds"),
                           cfg.allow_empty, title=os.path.basename(path))
    print(f"{os.path.basename(path)}: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} "
          f"ECE {metrics['ece']:.4f} -> report in {folder}")


def main(argv=None) -> int:
    args = parse_args(argv)
    given = vars(args)
    runtime = {k: given.get(k, getattr(Config(), k)) for k in RUNTIME_FIELDS}
    if workers := local_worker_count(runtime["parallel"], runtime["device"]):
        return launch_local_workers(__file__, sys.argv[1:] if argv is None else argv, workers)
    check_folders(runtime["input_dir"], runtime["out_dir"])
    maps_given = [load_label_map(path) for path in split_option(runtime["dict_path"])]
    run = setup_run(runtime["device"], runtime["precision"])
    if runtime["parallel"] and run.world_size == 1:
        run.print(f"-p True: {torch.cuda.device_count()} GPU(s) on this machine, predicting in one process "
                  f"on {run.device}")
    model, tokenizer, cfg, names, extra = load_any_model(runtime["save_path"], run.device, run.precision)
    follow_training_precision(run, cfg, runtime["save_path"], runtime["precision"])
    check_label_map(given_names(maps_given, cfg, runtime), names, runtime, cfg._label_groups)
    for key, value in {**given, **runtime}.items():  # runtime settings and explicit overrides of the training config
        setattr(cfg, key, value)
    check_prediction_options(cfg, model, tokenizer)
    check_columns(cfg, names, run)
    files = input_files(cfg.input_dir)
    if run.is_main:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
        except OSError as e:
            raise os_problem(e, f"--out_dir {cfg.out_dir}: cannot create the folder")
    state = DoneFiles(cfg)
    failed, totals = [], {"rows": 0, "tokens": 0, "seconds": 0.0}
    for name, out_name in output_names(files, cfg.out_format).items():
        src, dst = os.path.join(cfg.input_dir, name), os.path.join(cfg.out_dir, out_name)
        if not cfg.overwrite and state.up_to_date(name, src, dst):
            run.print(f"{name}: up to date in {dst} (use --overwrite to predict it again)")
            continue
        try:
            stats = predict_one_input(src, dst, out_name, model, tokenizer, cfg, names, run, extra)
        except InputError as e:
            if run.is_main:
                print(f"error: {e}", file=sys.stderr)
            failed.append(name)
            continue
        except OSError as e:  # a full disk: no later file would fare better; what is written is whole
            raise RunFault(f"{e.filename or dst}: cannot write ({e.strerror or e}); the predictions written before "
                           f"it are complete, and a rerun skips them")
        for key in totals:
            totals[key] += stats[key]
        try:
            state.mark_done(name, src, out_name, run)
        except OSError as e:  # the predictions are whole; only the note that they are done is missing
            raise os_problem(e, f"{state.path}: cannot write ({name} is predicted; a rerun predicts it again)")
    print_totals(totals, cfg, run)
    cleanup_run()
    if failed and run.is_main:
        print(f"{len(failed)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def check_columns(cfg: Config, names: list, run) -> None:
    """Every predictions column a name of its own (train.py refuses other names since 5 Dec 2026): a model trained
    before that still writes its CSV (two columns of one name, in order), while JSON lines and Parquet, which would
    lose one of them, are refused."""
    clash = column_clash(prediction_columns(cfg, model_tasks(cfg), names))
    if clash and cfg.out_format != "csv":
        raise InputError(f"--out_format {cfg.out_format}: {clash} (or predict to csv)")
    if clash:
        run.print(f"warning: {clash}", file=sys.stderr)


def check_folders(input_dir: str, out_dir: str) -> None:
    if not os.path.isdir(input_dir):
        raise InputError(f"{input_dir}: input folder not found")
    if not out_dir:
        raise InputError("--out_dir is empty: name the folder for the predictions")
    if os.path.realpath(out_dir) == os.path.realpath(input_dir):
        raise InputError(f"--out_dir {out_dir} is the input folder (-f {input_dir}): the predictions would replace "
                         "the inputs of the same name; give another --out_dir")


def given_names(maps_given: list, cfg: Config, runtime: dict) -> list:
    """The class names -d gives, as the model folder names them (several tasks: `<task>:<class>`)."""
    tasks = model_tasks(cfg)
    if len(maps_given) != (len(tasks) if tasks else 1):
        raise InputError(f"-d {runtime['dict_path']}: {len(maps_given)} label map(s), but the model in "
                         f"{runtime['save_path']} has {len(tasks) if tasks else 1} task(s) ({cfg.label_col}); "
                         "give its label maps in the order it was trained with")
    if not tasks:
        return maps_given[0]
    return combined_names([type(t)(t.name, classes, t.multi_label, 0) for t, classes in zip(tasks, maps_given)])


def check_label_map(names_given: list, names: list, runtime: dict, groups=None) -> None:
    """-d must be the label map the model was trained with (the model folder keeps its own copy); a model trained
    with --label_groups also takes a map of its groups."""
    if names_given != names and not (groups and names_given == groups.classes):
        saved = os.path.join(runtime["save_path"], "classes.json")
        trained = f" (or its classes' map {groups.classes})" if groups else ""
        raise InputError(f"{runtime['dict_path']}: this label map differs from the one the model was trained with "
                         f"({saved}): {dict(enumerate(names_given))} vs {dict(enumerate(names))}{trained}")


def check_prediction_options(cfg: Config, model, tokenizer) -> None:
    limit, why = model.length_limit(tokenizer)
    if cfg.max_length > limit:
        raise InputError(f"--max_length {cfg.max_length}: this model supports at most {limit} tokens ({why})")
    if cfg.max_length < 2:
        raise InputError("--max_length must be at least 2")
    if cfg.batch_size < 1:
        raise InputError("--batch_size must be at least 1")
    if cfg.num_workers < 0:
        raise InputError("--num_workers must be 0 or more")
    if cfg.long_text == "windows":  # the window must still move forward at a --max_length given here
        check_window_options(tokenizer, cfg.max_length, cfg.stride, bool(cfg.text_col2))


def input_files(folder: str) -> list:
    """The .csv, .tsv, .jsonl, .parquet and .txt files of `folder`, sorted by name."""
    files = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(PREDICT_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))
    if not files:
        raise InputError(f"{folder}: no .csv, .tsv, .jsonl, .parquet or .txt files to predict")
    return files


class DoneFiles:
    """out_dir/predict_state.json: which inputs were predicted, from which version of the file, by which model and
    settings; a file whose entry still matches is skipped (unless --overwrite)."""

    def __init__(self, cfg: Config):
        self.path = os.path.join(cfg.out_dir, STATE_FILE)
        self.done = {}
        if os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.done = json.load(f)
            except (OSError, ValueError, RecursionError):
                self.done = {}
        if not isinstance(self.done, dict) or not all(isinstance(v, dict) for v in self.done.values()):
            self.done = {}  # not what this file holds (edited by hand, another tool's): predict everything again
        marker = "export.json" if os.path.isfile(os.path.join(cfg.save_path, "export.json")) else "manifest.json"
        self.settings = {"model": sha256_file(os.path.join(cfg.save_path, marker)),
                         "max_length": cfg.max_length, "text_col": cfg.text_col, "text_col2": cfg.text_col2,
                         "allow_empty": cfg.allow_empty, "out_format": cfg.out_format,
                         "precision": cfg.precision,
                         "report": cfg.report}

    def up_to_date(self, name: str, src: str, dst: str) -> bool:
        entry = self.done.get(name)
        return bool(entry) and entry.get("input") == file_signature(src) and \
            entry.get("settings") == self.settings and os.path.exists(dst)

    def mark_done(self, name: str, src: str, out_name: str, run) -> None:
        self.done[name] = {"input": file_signature(src), "settings": self.settings, "output": out_name}
        if run.is_main:
            write_json(self.path, self.done)


def predict_one_input(src: str, dst: str, out_name: str, model, tokenizer, cfg: Config, names: list, run,
                      extra: dict) -> dict:
    """Predict `src` into `dst`; with --report and a label column, also out_dir/report_<stem>/."""
    tasks = model_tasks(cfg)
    present = [t for t in tasks if has_column(src, t.name)] if tasks else None
    labelled = cfg.report and (bool(present) if tasks else has_column(src, cfg.label_col))
    probs = [] if labelled else None
    # labels are checked before predicting, so a bad label costs no model time
    truth = load_truth(src, cfg, names, present) if labelled else None
    stats = predict_file(src, dst, model, tokenizer, cfg, names, run, extra, probs)
    if labelled and run.is_main:  # every rank has all the probabilities; one writes the report
        folder = os.path.join(cfg.out_dir, f"report_{os.path.splitext(out_name)[0]}")
        file_report(src, folder, np.concatenate(probs), truth.labels, cfg, names, extra)
    name = os.path.basename(src)
    run.print(f"{name}: {stats['rows']} rows -> {dst} ({stats['rows'] / stats['seconds']:.1f} sentences/s)")
    if cfg.report and not labelled:
        run.print(f"{name}: no '{cfg.label_col}' column, no report")
    return stats


def print_totals(totals: dict, cfg: Config, run) -> None:
    if totals["rows"]:
        run.print(f"predicted {totals['rows']} sentences in {totals['seconds']:.1f}s: "
                  f"{totals['rows'] / totals['seconds']:.1f} sentences/s, "
                  f"{totals['tokens'] / totals['seconds']:.0f} tokens/s (device {run.device} x{run.world_size}, "
                  f"precision {run.precision}, batch {cfg.batch_size})" +
                  (f"; {cpu_threads.describe()}" if run.device.type == "cpu" else ""))


if __name__ == "__main__":
    run_cli(main, whole_process=True)
