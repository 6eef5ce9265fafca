"""Texts longer than the model reads (--long_text windows): overlapping windows, one set of logits per document.

Each text is cut by the tokenizer's own overflow into windows of --max_length tokens (special tokens included),
each window repeating the last --stride tokens of the one before; the second text of a pair is kept whole in every
window. Every window is encoded and classified, and a document's logits are the mean (or the max) of its windows'
logits. Training backpropagates through that pooled value, so the loss is the document's, and predict.py pools
the same way: what is trained is what is predicted. In training, a document of more than --max_windows windows
gives a random contiguous run of that many, drawn again each epoch (seeded); validation and prediction read every
window, in batches of windows, so memory stays bounded however long a document is.
"""
import random
from dataclasses import dataclass

import torch

from config import InputError


@dataclass
class Windows:
    """How long texts are cut and pooled: recorded in train_config.json as long_text, stride, window_pool,
    max_windows."""
    stride: int
    pool: str = "mean"
    max_windows: int = 8


def window_spec(cfg):
    """The Windows of a Config with --long_text windows, else None (truncation, as before windows existed)."""
    if cfg.long_text != "windows":
        return None
    return Windows(cfg.stride, cfg.window_pool, cfg.max_windows)


def special_token_count(tokenizer, pair: bool) -> int:
    return tokenizer.num_special_tokens_to_add(pair=pair)


def check_window_options(tokenizer, max_length: int, stride: int, pair: bool) -> None:
    """--stride must leave a window room to move forward: smaller than the window's share of the first text."""
    room = max_length - special_token_count(tokenizer, pair)
    if stride >= room:
        raise InputError(f"--stride {stride}: must be smaller than the window, --max_length {max_length} less the "
                         f"model's {max_length - room} special tokens = {room} tokens of text")


def tokenize_windows(tokenizer, texts: list, max_length: int, stride: int, texts2: list = None,
                     token_types: bool = False, rows: list = None, where: str = "") -> tuple:
    """(windows per text: a list of token-id lists, the same shape of token type ids or None). Rows are named in
    errors as `where`, row `rows[i]` (default: the position in `texts`, from 1)."""
    if not texts:
        return [], None
    pair = texts2 is not None
    check_window_options(tokenizer, max_length, stride, pair)
    if pair:  # the second text is repeated in every window: it must leave room for the first text to advance
        room = max_length - special_token_count(tokenizer, True) - stride
        lengths = tokenizer(texts2, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for i, ids in enumerate(lengths):
            if len(ids) >= room:
                row = rows[i] if rows else i + 1
                raise InputError(f"{where + ', ' if where else ''}row {row}: the second text has {len(ids)} tokens; "
                                 f"kept whole in every window of --max_length {max_length} with --stride {stride}, "
                                 f"it leaves no room for the first text (at most {room - 1} tokens)")
    try:
        encoded = tokenizer(texts, texts2, truncation="only_first" if pair else True, max_length=max_length,
                            stride=stride, return_overflowing_tokens=True, add_special_tokens=True,
                            return_attention_mask=False, return_token_type_ids=token_types)
    except NotImplementedError:
        raise InputError("--long_text windows needs a fast (Rust) tokenizer, which this checkpoint does not have")
    owner = encoded["overflow_to_sample_mapping"]
    windows = [[] for _ in texts]
    for ids, doc in zip(encoded["input_ids"], owner):
        windows[doc].append(ids)
    types = None
    if token_types and pair:  # single texts: all zero, which the encoder assumes when given none
        types = [[] for _ in texts]
        for ids, doc in zip(encoded["token_type_ids"], owner):
            types[doc].append(ids)
    return windows, types


def pool_window_logits(logits: torch.Tensor, window_counts: torch.Tensor, how: str) -> torch.Tensor:
    """(windows, classes) logits of consecutive documents' windows -> (documents, classes): mean or max per
    document. `window_counts` (documents,) says how many windows each has; differentiable, no host sync."""
    n_docs = window_counts.shape[0]
    owner = torch.repeat_interleave(torch.arange(n_docs, device=logits.device),
                                    window_counts.to(logits.device, torch.long),
                                    output_size=logits.shape[0])
    index = owner.unsqueeze(1).expand_as(logits)
    start = logits.new_zeros((n_docs, logits.shape[1]))
    if how == "max":
        return start.scatter_reduce(0, index, logits, reduce="amax", include_self=False)
    return start.scatter_reduce(0, index, logits, reduce="mean", include_self=False)


def training_windows(n_windows: int, cap: int, seed: int, epoch: int, doc: int) -> slice:
    """Which windows of a document one training epoch reads: all, or a random contiguous run of `cap`,
    seeded by (seed, epoch, document) so that a resumed run draws the same."""
    if n_windows <= cap:
        return slice(0, n_windows)
    start = random.Random((seed * 1_000_003 + epoch) * 1_000_033 + doc).randrange(n_windows - cap + 1)
    return slice(start, start + cap)


class WindowedDataset(torch.utils.data.Dataset):
    """Documents as windows of token ids (with type ids for pairs), or as cached window vectors (--boost); labels
    per document. `train_cap` > 0 draws a run of at most that many windows per document and epoch."""

    def __init__(self, windows=None, labels=None, features=None, token_type_ids=None, train_cap: int = 0,
                 seed: int = 0):
        self.windows, self.labels, self.features, self.token_type_ids = windows, labels, features, token_type_ids
        self.train_cap, self.seed, self.epoch = train_cap, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.features if self.features is not None else self.windows)

    def window_count(self, i: int) -> int:
        return len(self.features[i] if self.features is not None else self.windows[i])

    def chosen(self, i: int) -> slice:
        n = self.window_count(i)
        return training_windows(n, self.train_cap, self.seed, self.epoch, i) if self.train_cap else slice(0, n)

    def __getitem__(self, i):
        take = self.chosen(i)
        item = {"index": i}
        if self.features is not None:
            item["window_features"] = self.features[i][take]
        else:
            item["windows"] = self.windows[i][take]
            if self.token_type_ids is not None:
                item["window_types"] = self.token_type_ids[i][take]
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def lengths(self) -> list:
        """Tokens per document (every window), for sorting batches."""
        if self.features is not None:
            return [len(f) for f in self.features]
        return [sum(len(w) for w in doc) for doc in self.windows]

    def costs(self) -> list:
        """Windows each document puts in a batch: what a batch's size counts."""
        return [min(self.window_count(i), self.train_cap or self.window_count(i)) for i in range(len(self))]


def window_summary(windows: list, cap: int) -> str:
    """The start-up line: how many documents needed more than one window, and the largest count."""
    counts = [len(doc) for doc in windows]
    long_docs = sum(c > 1 for c in counts)
    most = max(counts, default=0)
    capped = f", at most {cap} per document in each training epoch" if most > cap else ""
    return f"{long_docs} of {len(counts)} training document(s) need more than one window, the most {most}{capped}"
