"""Reading the user's files: the label map, labelled CSVs, files to predict; the split; batches.

Every problem in an input file is reported with its file, row and column (row 1 is the header, as a
spreadsheet shows it), all problems of a file in one pass up to MAX_PROBLEMS, before any training starts.
Batches are padded to their own longest sentence, never to a fixed length, and drawn from length buckets.
"""
import codecs
import hashlib
import io
import json
import math
import os
import random
import re
import sys
from dataclasses import dataclass, field

import torch

from config import InputError
from tables import decoded_lines, iter_records, table_columns, table_format, unit

MAX_PROBLEMS = 20
INT_RE = re.compile(r"^[+-]?\d+$")
FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+[eE][+-]?\d+|\d+\.\d*[eE][+-]?\d+)$")
# Sorting happens inside windows of this many batches: enough to cut most padding, few enough that
# batches still mix lengths, and so classes, the way a plain shuffle does.
BUCKET_WINDOW_BATCHES = 16


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


# ----------------------------------------------------------------------------------------------- label map
def load_label_map(path: str) -> list:
    """Class names ordered by id, from a JSON object {name: id} whose ids are 0..n-1."""
    pairs = read_json_pairs(path, path, "label map", '{"class name": id, ...}')
    names_seen, ids = {}, {}
    for name, idx in pairs:
        where = f"{path}, key '{name}'"
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise InputError(f"{where}: id {json.dumps(idx)} is not an integer")
        if idx in ids:
            raise InputError(f"{where}: id {idx} is already used by '{ids[idx]}'")
        check_map_key(path, name, names_seen, idx, "class", "id")
        names_seen[name] = idx
        ids[idx] = name
    if len(ids) < 2:
        raise InputError(f"{path}: needs at least two classes, found {len(ids)}")
    missing = sorted(set(range(len(ids))) - set(ids))
    if missing:
        raise InputError(f"{path}: ids must run from 0 to {len(ids) - 1} without gaps; missing "
                         f"{', '.join(map(str, missing[:10]))} (found {', '.join(map(str, sorted(ids)[:10]))}"
                         f"{'...' if len(ids) > 10 else ''})")
    return [ids[i] for i in range(len(ids))]


def read_json_pairs(path: str, where: str, what: str, expected: str) -> list:
    """The (key, value) pairs of the JSON object in `path`, in file order, repeated keys kept for the caller to
    name; every problem is one InputError line that starts with `where`."""
    if not os.path.isfile(path):
        raise InputError(f"{where}: {what} not found" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        with open(path, "rb") as f:
            text = _decode_utf8(f.read(), path)
        pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    except OSError as e:
        raise InputError(f"{where}: cannot read the {what} ({e.strerror or e})")
    except json.JSONDecodeError as e:
        raise InputError(f"{where}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})")
    except (ValueError, RecursionError) as e:  # a number of thousands of digits, nesting thousands deep
        raise InputError(f"{where}: not a usable JSON {what} ({str(e).split(';')[0]})")
    if not isinstance(pairs, list) or (pairs and not all(isinstance(p, tuple) for p in pairs)):
        raise InputError(f"{where}: expected a JSON object {expected}, got {type(pairs).__name__}")
    return pairs


def check_map_key(where: str, name: str, seen, idx: int, kind: str, id_name: str) -> None:
    """A key of a label map (kind "class") or of a groups map (kind "group", whose id is its place in the map): not
    repeated, not empty, and named like a number only if that number is its id (labels would be ambiguous)."""
    if name in seen:
        raise InputError(f"{where}, key '{name}': {kind} name appears twice")
    if not name.strip():
        raise InputError(f"{where}: a {kind} name is empty")
    if INT_RE.match(name.strip()) and int(name) != idx:
        raise InputError(f"{where}, key '{name}': a {kind} named like the number {name} must have {id_name} {name}, "
                         f"not {idx} (labels in the CSV would be ambiguous)")


# ------------------------------------------------------------------------------------------------ reading
def _decode_utf8(raw: bytes, path: str) -> str:
    """UTF-8 with or without BOM; anything else is named and refused."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{path}: the file is UTF-16; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        row = raw.count(b"\n", 0, e.start) + 1
        byte = raw[e.start:e.start + 1].hex()
        guess = " (it looks like Latin-1 or Windows-1252)" if raw[e.start] >= 0x80 else ""
        raise InputError(f"{path}, line {row}: not UTF-8 text, byte 0x{byte} at offset {e.start}{guess}; "
                         "save it as UTF-8")


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: {what} not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: {what} is a folder, expected a file")


def _read_text(path: str, what: str) -> str:
    _check_file(path, what)
    with open(path, "rb") as f:
        return _decode_utf8(f.read(), path)


# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; tab and newline are ordinary text.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# half of a UTF-16 pair alone (JSON's "\ud800"): Python keeps it in a str, no tokenizer can read it
SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _control_char(text: str):
    """The first control character (Unicode Cc other than tab and newline) or lone surrogate in text, or None."""
    found = CONTROL_RE.search(text) or SURROGATE_RE.search(text)  # regexes: files of a million lines pass here
    return (found.start(), found.group()) if found else None


def char_kind(char: str) -> str:
    return "lone surrogate" if SURROGATE_RE.match(char) else "control character"


@dataclass
class LabelledData:
    texts: list
    labels: list  # int per row, or a list of ints per row with multi_label
    rows: list = field(default_factory=list)  # row number in the file, for messages
    texts2: list = None  # the second text of each pair (--text_col2), else None

    def subset(self, idx: list) -> "LabelledData":
        return LabelledData([self.texts[i] for i in idx], [self.labels[i] for i in idx], [self.rows[i] for i in idx],
                            None if self.texts2 is None else [self.texts2[i] for i in idx])


def data_fingerprint(names: list, *datasets: LabelledData) -> str:
    """SHA-256 of the classes and of every row's texts and labels, in order: what a resumed run must train and
    validate on again (a file edited, cut or relabelled since the checkpoint gives another)."""
    digest = hashlib.sha256(json.dumps(names).encode("utf-8"))
    for data in datasets:
        for start in range(0, len(data.texts), 10_000):  # in chunks: a million rows never become one string
            rows = slice(start, start + 10_000)
            digest.update(json.dumps([data.texts[rows], data.texts2 and data.texts2[rows], data.labels[rows]],
                                     default=str).encode("utf-8"))
        digest.update(b"|")  # where one dataset ends: the same rows split otherwise give another fingerprint
    return digest.hexdigest()


def prediction_columns(cfg, tasks: list, names: list) -> list:
    """predict.py's header for a run's text columns (`cfg.text_col`, `cfg.text_col2`): the text column(s), the
    chosen class (`label`, or `label_<task>` for several tasks, tasks.Task), then one probability column per class
    (the model's outputs: with --label_groups, the groups)."""
    labels = ["label"] if not tasks else [f"label_{t.name}" for t in tasks]
    return [cfg.text_col, *([cfg.text_col2] if cfg.text_col2 else []), *labels, *names]


def column_clash(header: list) -> str:
    """Why `header` cannot be written with a column per name (a class named `label` or like a text column would
    overwrite it in JSON lines and Parquet, and leave two columns of one name in a CSV); "" if it can."""
    clashes = sorted({c for c in header if header.count(c) > 1})
    if not clashes:
        return ""
    return (f"{', '.join(map(repr, clashes))} would name two of predict.py's columns ({', '.join(header)}: the text "
            "column(s), the chosen class, one per class); rename the class or the text column")


def parse_label(cell: str, names: list, index: dict, multi_label: bool):
    """A label cell -> class id (or ids); raises ValueError with the reason."""
    tokens = [t.strip() for t in cell.split(",")] if multi_label else [cell.strip()]
    if multi_label and len(tokens) > 1 and any(not t for t in tokens):
        raise ValueError(f"empty label in '{cell}'")
    ids = []
    for token in tokens:
        if not token:
            raise ValueError("empty label")
        if token in index:
            ids.append(index[token])
        elif INT_RE.match(token):
            value = int(token)
            if value < 0:
                raise ValueError(f"negative label {token}")
            if value >= len(names):
                raise ValueError(f"label id {token} is not in the label map (ids 0 to {len(names) - 1})")
            ids.append(value)
        elif FLOAT_RE.match(token):
            raise ValueError(f"label {token} is a float; use an integer id or a class name")
        elif not multi_label and "," in token:
            raise ValueError(f"'{token}' holds several labels; use --multi_label True for that")
        else:
            close = [n for n in names if n.lower() == token.lower()]
            spaced = [n for n in names if n.strip() == token]  # cells lose their spaces, map keys keep them
            hint = (f" (the label map has '{spaced[0]}', with spaces around it: remove them there)" if spaced else
                    f" (did you mean '{close[0]}'?)" if close else "")
            raise ValueError(f"label '{token}' is not a class of the label map{hint}")
    return sorted(set(ids)) if multi_label else ids[0]


def load_labelled_file(path: str, text_col: str, label_col: str, names: list, multi_label: bool,
                       text_col2: str = "", tasks: list = None) -> LabelledData:
    """Texts (pairs of texts with text_col2) and class ids of a .csv, .tsv, .jsonl or .parquet file; every bad row
    is reported (up to MAX_PROBLEMS) before anything runs. With `tasks` (tasks.Task, several label columns), each
    row's label is a tuple with one entry per task, None where its cell is empty."""
    multi_label_classes = [t.classes for t in tasks if t.multi_label] if tasks else [names] if multi_label else []
    for name in (n for classes in multi_label_classes for n in classes):
        if "," in name:
            raise InputError(f"-d: class '{name}' has a comma in its name; with --multi_label True a comma separates "
                             "the classes of a label cell (and of predict.py's label column): rename it")
    fmt = table_format(path)
    if fmt is None:
        raise InputError(f"{path}: unknown file type; use .csv, .tsv, .jsonl or .parquet")
    text = _read_text(path, f"{fmt.upper()} file") if fmt != "parquet" else _check_file(path, "Parquet file")
    index = {name: i for i, name in enumerate(names)}
    text_cols = (text_col, text_col2) if text_col2 else (text_col,)
    label_cols = [label_col] if tasks is None else [task.name for task in tasks]
    required = ((text_col, "--text_col"),) + tuple((col, "--label_col") for col in label_cols)
    required += ((text_col2, "--text_col2"),) if text_col2 else ()
    data, problems, blank = LabelledData([], [], texts2=[] if text_col2 else None), [], 0
    word = unit(path)
    for row, record, problem in iter_records(path, required, text, text_cols):
        if problem:
            problems.append(f"{path}, {word} {row}: {problem}")
            continue
        cells = [record[col].replace("\r\n", "\n") for col in text_cols]
        if not all(cell.strip() for cell in cells):
            blank += 1
            continue
        for col, cell in zip(text_cols, cells):
            if bad := _control_char(cell):
                problems.append(f"{path}, {word} {row}, column '{col}': {char_kind(bad[1])} U+{ord(bad[1]):04X} "
                                f"at position {bad[0] + 1}")
        if tasks is None:
            try:
                label = parse_label(record[label_col], names, index, multi_label)
            except ValueError as e:
                problems.append(f"{path}, {word} {row}, column '{label_col}': {e}")
                label = None
        else:
            label = task_cells(record, tasks, problems, f"{path}, {word} {row}")

        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"{path}: stopped after {MAX_PROBLEMS} problems")
            break
        data.texts.append(cells[0])
        if text_col2:
            data.texts2.append(cells[1])
        data.labels.append(label)
        data.rows.append(row)
    if problems:
        raise InputError("\n".join(problems) if len(problems) == 1 else
                         f"{len(problems)} problems in {path}:\n  " + "\n  ".join(problems))
    if blank:
        warn(f"{path}: dropped {blank} row(s) with an empty or blank " + " or ".join(f"'{c}'" for c in text_cols))
    if not data.texts:
        raise InputError(f"{path}: no rows with text in column '{text_col}'")
    return data


def task_cells(record: dict, tasks: list, problems: list, where: str) -> tuple:
    """One label per task from a row (None for an empty cell); problems are appended with their column."""
    label = []
    for task in tasks:
        cell = record[task.name]
        try:
            label.append(parse_label(cell, task.classes, task.index, task.multi_label) if cell.strip() else None)
        except ValueError as e:
            problems.append(f"{where}, column '{task.name}': {e}")
            label.append(None)
    return tuple(label)


def check_task_data(path: str, data: LabelledData, tasks: list, training: bool = True) -> None:
    """Several tasks: each needs labelled rows (training) and gets check_training_data's checks on them; a training
    row labelled for no task is refused."""
    unlabelled = [row for row, label in zip(data.rows, data.labels) if all(v is None for v in label)]
    if training and unlabelled:
        raise InputError(f"{path}, row {unlabelled[0]}: no label in any task's column "
                         f"({', '.join(t.name for t in tasks)}); label it for one task at least, or remove it"
                         + (f" ({len(unlabelled)} such rows)" if len(unlabelled) > 1 else ""))
    for k, task in enumerate(tasks):
        labels = [label[k] for label in data.labels if label[k] is not None]
        if not labels:
            if training:
                raise InputError(f"{path}: no row has a label in column '{task.name}'; every task needs rows")
            warn(f"{path}: no row has a label in column '{task.name}'; that task is not validated")
            continue
        if training:
            check_training_data(f"{path}, column '{task.name}'", LabelledData(labels, labels), task.classes,
                                task.multi_label)


def split_keys(labels: list, tasks: list) -> list:
    """What stratified_split balances for multitask rows: each row's first labelled task and (first) class, as
    one id among every task's classes."""
    keys = []
    for label in labels:
        k = next(k for k, value in enumerate(label) if value is not None)
        value = label[k]
        keys.append(tasks[k].start + (min(value) if tasks[k].multi_label else value))
    return keys


def check_training_data(path: str, data: LabelledData, names: list, multi_label: bool) -> None:
    """Dataset-level problems: one class only, more classes than rows; classes without rows are a warning."""
    counts = class_counts(data.labels, len(names), multi_label)
    present = [names[i] for i, c in enumerate(counts) if c > 0]
    if len(names) > len(data.texts):
        raise InputError(f"{path}: {len(names)} classes but only {len(data.texts)} row(s); "
                         "a classifier needs more rows than classes")
    if len(present) < 2 and not multi_label:
        raise InputError(f"{path}: every row has the class '{present[0]}'; training needs at least two classes")
    absent = [names[i] for i, c in enumerate(counts) if c == 0]
    if absent:
        warn(f"{path}: no row has the class(es) {', '.join(absent)}; the model will never predict them")


def check_validation_data(path: str, train: LabelledData, valid: LabelledData, names: list,
                          multi_label: bool) -> None:
    """Classes that are trained but never validated are a warning that names them."""
    trained = class_counts(train.labels, len(names), multi_label)
    validated = class_counts(valid.labels, len(names), multi_label)
    unseen = [names[i] for i in range(len(names)) if trained[i] and not validated[i]]
    if unseen:
        warn(f"{path}: no row has the class(es) {', '.join(unseen)}; their recall cannot be measured, and "
             "their F1 counts as 0 in the validation macro-F1")


def class_counts(labels: list, n_classes: int, multi_label: bool) -> list:
    counts = [0] * n_classes
    for label in labels:
        for i in (label if multi_label else (label,)):
            counts[i] += 1
    return counts


# ------------------------------------------------------------------------------------------------- split
def stratify_keys(labels: list, n_classes: int, multi_label: bool) -> list:
    """The class each row is balanced by in a split: its label; multi-label, its rarest label, which keeps rare
    classes in every part."""
    if not multi_label:
        return list(labels)
    counts = class_counts(labels, n_classes, True)
    return [min(label, key=lambda c: counts[c]) for label in labels]


def stratified_folds(keys: list, k: int, seed: int) -> list:
    """--cv: k folds of row indices (sorted), each class's rows shuffled by `seed` and dealt in turn, so each fold
    holds every class's share to within a row and the folds' sizes differ by a row at most."""
    by_class = {}
    for i, key in enumerate(keys):
        by_class.setdefault(key, []).append(i)
    rng = random.Random(seed)
    dealt = []
    for key in sorted(by_class):
        rows = by_class[key]
        rng.shuffle(rows)
        dealt += rows  # one class after another: dealing continues where the previous class stopped
    return [sorted(dealt[fold::k]) for fold in range(k)]


def stratified_split(labels: list, valid_frac: float, seed: int, names: list, multi_label: bool,
                     warn_absent: bool = True):
    """Seeded train/validation indices with each class in proportion; rare classes stay in train, with a warning.

    Multi-label rows are stratified by their rarest label, which keeps rare classes in both parts.
    """
    if not 0 < valid_frac < 1:
        raise InputError(f"--valid_frac {valid_frac}: must be between 0 and 1")
    counts = class_counts(labels, len(names), multi_label)
    key = stratify_keys(labels, len(names), multi_label)
    by_class = {}
    for i, k in enumerate(key):
        by_class.setdefault(k, []).append(i)
    rng = random.Random(seed)
    train_idx, valid_idx, too_rare = [], [], []
    for k in sorted(by_class):
        idx = by_class[k]
        rng.shuffle(idx)
        n_valid = int(round(len(idx) * valid_frac))
        if len(idx) < 2:
            too_rare.append(names[k])
            n_valid = 0
        else:
            n_valid = min(max(n_valid, 1), len(idx) - 1)
        valid_idx += idx[:n_valid]
        train_idx += idx[n_valid:]
    if too_rare:
        warn(f"class(es) {', '.join(too_rare)} have a single row: kept in training, absent from validation")
    absent = [names[i] for i, c in enumerate(counts) if c == 0]
    if absent and warn_absent:  # several tasks: check_task_data says it per task (keys are one task's classes)
        warn(f"class(es) {', '.join(absent)} have no rows: absent from training and validation")
    if not valid_idx:
        raise InputError(f"--valid_frac {valid_frac}: leaves no validation rows out of {len(labels)}")
    return sorted(train_idx), sorted(valid_idx)


# ------------------------------------------------------------------------------------------ tokens, batches
def tokenize(tokenizer, texts: list, max_length: int, texts2: list = None, token_types: bool = False) -> tuple:
    """(token ids per text, token type ids per text or None): with special tokens, truncated to max_length, not
    padded. With texts2, each row is the tokenizer's own pair ([CLS] a [SEP] b [SEP] for BERT, <s> a </s></s> b </s>
    for RoBERTa), the longer text truncated first. Type ids are kept only where asked and not all zero (pairs)."""
    if not texts:
        return [], None
    encoded = tokenizer(texts, texts2, truncation="longest_first", max_length=max_length, add_special_tokens=True,
                        return_attention_mask=False, return_token_type_ids=token_types)
    types = encoded.get("token_type_ids") if token_types else None
    if types is not None and not any(any(t) for t in types):
        types = None  # single texts: all zero, which is what the encoder assumes when given none
    return encoded["input_ids"], types


class EncodedDataset(torch.utils.data.Dataset):
    """Token ids (with token type ids for pairs), or cached sentence vectors; optional labels."""

    def __init__(self, input_ids=None, labels=None, features=None, token_type_ids=None):
        self.input_ids, self.labels, self.features = input_ids, labels, features
        self.token_type_ids = token_type_ids
        self.teacher_probs = None  # --teacher: (rows, classes) blended into each row's target (distill.py)

    def __len__(self):
        return len(self.features) if self.features is not None else len(self.input_ids)

    def __getitem__(self, i):
        item = {"index": i}
        if self.features is not None:
            item["features"] = self.features[i]
        else:
            item["input_ids"] = self.input_ids[i]
            if self.token_type_ids is not None:
                item["token_type_ids"] = self.token_type_ids[i]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        if self.teacher_probs is not None:
            item["teacher_probs"] = self.teacher_probs[i]
        return item

    def lengths(self) -> list:
        return [1] * len(self) if self.features is not None else [len(ids) for ids in self.input_ids]


def blend_targets(labels: torch.Tensor, soft: torch.Tensor, weight: float, n_classes: int) -> torch.Tensor:
    """--teacher (distill.py): (1 - weight) x the labels (class ids, or a 0/1 matrix) + weight x the teacher's
    probabilities (rows, classes): a probability target for cross-entropy, or a per-class one for BCE."""
    hard = labels.float() if labels.dim() == 2 else torch.nn.functional.one_hot(labels, n_classes).float()
    return (1 - weight) * hard + weight * soft


@dataclass
class Collator:
    """Pads a batch to its own longest sentence: (batch, seq) ids and mask, labels as the loss wants them."""
    pad_id: int = 0
    n_classes: int = 0
    multi_label: bool = False
    tasks: list = None  # several tasks (tasks.Task): labels become tasks.task_targets
    teacher_weight: float = 0.0  # --teacher: the teacher's share of the targets of rows that carry its probabilities

    def __call__(self, items: list) -> dict:
        batch = {"index": torch.tensor([it["index"] for it in items])}
        documents = items  # labels are per item; with windows, tokens are per window
        if "windows" in items[0] or "window_features" in items[0]:
            items = self._flatten_windows(documents, batch)
        elif "features" in items[0]:
            batch["features"] = torch.stack([it["features"] for it in items])
        if items and "input_ids" in items[0]:
            longest = max(len(it["input_ids"]) for it in items)
            ids = torch.full((len(items), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(items), longest), dtype=torch.long)
            for row, it in enumerate(items):
                ids[row, :len(it["input_ids"])] = torch.as_tensor(it["input_ids"])
                mask[row, :len(it["input_ids"])] = 1
            batch["input_ids"], batch["attention_mask"] = ids, mask
            if "token_type_ids" in items[0]:
                types = torch.zeros((len(items), longest), dtype=torch.long)
                for row, it in enumerate(items):
                    types[row, :len(it["token_type_ids"])] = torch.as_tensor(it["token_type_ids"])
                batch["token_type_ids"] = types
        if "labels" in documents[0]:
            if self.tasks:
                from tasks import task_targets
                batch["labels"] = task_targets([it["labels"] for it in documents], self.tasks)
            elif self.multi_label:
                target = torch.zeros((len(documents), self.n_classes))
                for row, it in enumerate(documents):
                    target[row, it["labels"]] = 1.0
                batch["labels"] = target
            else:
                batch["labels"] = torch.tensor([it["labels"] for it in documents])
            if "teacher_probs" in documents[0]:
                batch["labels"] = blend_targets(batch["labels"], torch.stack([it["teacher_probs"] for it in documents]),
                                                self.teacher_weight, self.n_classes)
        return batch

    @staticmethod
    def _flatten_windows(documents: list, batch: dict) -> list:
        """--long_text windows: every window of the batch's documents becomes a row of its own, in document order;
        batch["window_counts"] says how many rows each document has, and labels stay per document."""
        batch["window_counts"] = torch.tensor([len(d.get("windows", d.get("window_features"))) for d in documents])
        if "window_features" in documents[0]:
            batch["features"] = torch.cat([d["window_features"] for d in documents])
            return []
        rows = [{"input_ids": w} for d in documents for w in d["windows"]]
        if "window_types" in documents[0]:
            for row, types in zip(rows, (t for d in documents for t in d["window_types"])):
                row["token_type_ids"] = types
        return rows


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length, in a new random order every epoch; each row once per epoch.

    Each epoch shuffles all rows, cuts them into windows of BUCKET_WINDOW_BATCHES global batches, sorts each
    window by length, cuts it into batches and shuffles the batches. Under DDP every global batch of
    batch_size * num_replicas rows is dealt out to the ranks, so N processes see exactly the batches one
    process with an N times larger batch would; short final batches are topped up with rows of the same epoch.
    `shuffle=False` keeps windows in input order (used by evaluation). `skip_batches` resumes mid-epoch.
    With `costs` (--long_text windows: windows per document), a batch holds documents until their costs would pass
    batch_size, so that it never holds more than batch_size windows (a longer document alone); the number of
    batches then varies a little from epoch to epoch (`batches_in_epoch`).
    """

    def __init__(self, lengths: list, batch_size: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, window_batches: int = None, costs: list = None):
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        # read at construction, not at import, so a benchmark can try other windows
        self.window = window_batches or BUCKET_WINDOW_BATCHES
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip_batches = 0, 0
        self.costs, self._counted = costs, {}

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def global_batches(self) -> list:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        size = self.batch_size * self.num_replicas
        window = size * self.window
        batches = []
        for start in range(0, len(order), window):
            if self.costs is not None:
                chunk = sorted(order[start:start + window], key=lambda i: (self.costs[i], self.lengths[i]))
                batches += self._by_cost(chunk, size)
                continue
            chunk = sorted(order[start:start + window], key=lambda i: self.lengths[i])
            batches += [chunk[b:b + size] for b in range(0, len(chunk), size)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _by_cost(self, chunk: list, budget: int) -> list:
        batches, current, spent = [], [], 0
        for i in chunk:
            if current and spent + self.costs[i] > budget:
                batches.append(current)
                current, spent = [], 0
            current.append(i)
            spent += self.costs[i]
        return batches + ([current] if current else [])

    def batches_in_epoch(self, epoch: int) -> int:
        """Global batches of an epoch (all of it, whatever skip_batches says)."""
        if self.costs is None:
            return math.ceil(len(self.lengths) / (self.batch_size * self.num_replicas))
        if epoch not in self._counted:
            kept = self.epoch
            self.epoch = epoch
            self._counted[epoch] = len(self.global_batches())
            self.epoch = kept
        return self._counted[epoch]

    def __iter__(self):
        for batch in self.global_batches()[self.skip_batches:]:
            if self.num_replicas > 1:
                if len(batch) % self.num_replicas:  # every rank needs a row: repeat from the batch's start
                    batch = batch + batch[:self.num_replicas - len(batch) % self.num_replicas]
                batch = batch[self.rank::self.num_replicas]
            yield batch

    def __len__(self):
        return self.batches_in_epoch(self.epoch) - self.skip_batches


class SplitBatchSampler(torch.utils.data.Sampler):
    """Each batch of `batches` cut into `parts` micro-batches in turn: with `parts` times the gradient accumulation,
    every update sees the rows it would have seen whole (used after running out of memory). `on_update` counts
    the whole batches whose update is done, from `done` on, so that an interrupted epoch can go on from there."""

    def __init__(self, batches, parts: int, done: int = 0):
        self.batches, self.parts, self.done, self.updated = batches, parts, done, done

    def __iter__(self):
        for batch in self.batches:
            for i in range(self.parts):
                piece = batch[i * len(batch) // self.parts:(i + 1) * len(batch) // self.parts]
                # a batch smaller than `parts` repeats a row, so that each update still has `parts` micro-batches
                yield piece or batch[i % len(batch):i % len(batch) + 1]

    def __len__(self):
        return len(self.batches) * self.parts

    def on_update(self, micro_steps: int) -> int:
        """Record an optimizer update after `micro_steps` micro-batches; returns the epoch's whole batches done."""
        self.updated = self.done + micro_steps // self.parts
        return self.updated


# ------------------------------------------------------------------------------------------- prediction input
PREDICT_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet", ".txt")


def has_column(path: str, column: str) -> bool:
    """Whether a table file names `column` (False for .txt files and unreadable headers)."""
    return column in table_columns(path)


def _text_lines(path: str, f):
    """A .txt file's lines (from a file opened in binary mode) as the records of a table whose one column is the
    text; a line is a row."""
    for number, line in enumerate(decoded_lines(path, f, "row"), start=1):
        yield number, {"": line.rstrip("\r\n")}, None


def iter_predict_file(path: str, text_col: str, chunk_rows: int, skipped: list = None, text_col2: str = ""):
    """Stream (row_numbers, texts, texts2) chunks of a table file (.csv, .tsv, .jsonl, .parquet: column text_col,
    and text_col2 for pairs) or a .txt file (one sentence a line); texts2 is None without text_col2.

    Rows with a blank text are skipped (and counted in `skipped[0]`); the rest keep their input order.
    """
    is_txt = path.lower().endswith(".txt")
    text_cols = (text_col, text_col2) if text_col2 else (text_col,)
    if text_col2 and is_txt:
        raise InputError(f"{path}: a .txt file holds one text a line, and this model reads pairs "
                         f"('{text_col}', '{text_col2}'): give it a table (.csv, .tsv, .jsonl, .parquet) with both")
    with open(path, "rb") as probe:
        head = probe.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{path}: the file is UTF-16; save it as UTF-8")
    with open(path, "rb") as f:  # decoded line by line (tables.decoded_lines): a bad byte is named on its line
        if is_txt:
            records, text_cols, word = _text_lines(path, f), ("",), "row"
        else:
            required = tuple(zip(text_cols, ("--text_col", "--text_col2")))
            records, word = iter_records(path, required, text_cols=text_cols, stream=f), unit(path)
        rows, chunk = [], [[] for _ in text_cols]
        for row, record, problem in records:
            if problem:
                raise InputError(f"{path}, {word} {row}: {problem}")
            cells = [record[col].replace("\r\n", "\n") for col in text_cols]
            if not all(cell.strip() for cell in cells):
                if skipped is not None:
                    skipped[0] += 1
                continue
            for col, cell in zip(text_cols, cells):
                if bad := _control_char(cell):
                    raise InputError(f"{path}, {word} {row}" + (f", column '{col}'" if col else "") +
                                     f": {char_kind(bad[1])} U+{ord(bad[1]):04X} at position {bad[0] + 1}")
            rows.append(row)
            for texts, cell in zip(chunk, cells):
                texts.append(cell)
            if len(rows) >= chunk_rows:
                yield rows, chunk[0], chunk[1] if text_col2 else None
                rows, chunk = [], [[] for _ in text_cols]
        if rows:
            yield rows, chunk[0], chunk[1] if text_col2 else None
