"""The `--boost` cache: sentence vectors of a frozen encoder, computed once and kept on disk.

With `--bert_finetuning False` the encoder never changes, so every epoch would compute the same sentence vectors
again; with `--boost True` they are computed once and the head trains on them (epochs after the first run
about 80x faster, bench/boost.py). The cache file in save_path/boost_cache/ (or --boost_cache; the members of
--seeds and --cv share their run's) is keyed by the checkpoint, max_length,
pooling and precision; inside it each vector is keyed by a hash of its text, so new or edited sentences are
encoded and unchanged ones are not. A damaged cache is rebuilt, never trusted.
"""
import hashlib
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from checkpoint import atomic_path
from dataset import BucketBatchSampler, Collator, EncodedDataset
from engine import to_device
from runlog import on_terminal
from runtime import Run, unwrap


def checkpoint_fingerprint(model_path: str) -> str:
    """Identifies a checkpoint cheaply: a folder by its config and its weight files' names, sizes and times."""
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


def boost_cache_file(folder: str, model_path: str, max_length: int, pooling: str, precision: str) -> str:
    parts = f"{checkpoint_fingerprint(model_path)}|{max_length}|{pooling}|{precision}"
    key = hashlib.sha256(parts.encode()).hexdigest()[:24]
    return os.path.join(folder, f"{key}.safetensors")


def text_digest(text: str, text2: str = None) -> bytes:
    """A row's key in the cache: its text, or its pair of texts (joined by NUL, which no accepted text holds)."""
    key = text if text2 is None else f"{text}\x00{text2}"
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


@torch.inference_mode()
def cached_sentence_vectors(model, tokenizer, texts: list, input_ids: list, cfg, model_path: str,
                            run: Run, texts2: list = None, token_type_ids: list = None) -> torch.Tensor:
    """Frozen-encoder sentence vectors (rows, features) for `texts` (pairs with `texts2`), computed once and kept
    on disk.

    The cache file is keyed by the checkpoint, max_length, pooling and precision; inside it each vector is
    keyed by a hash of its text (or pair), so new or edited sentences are encoded and unchanged ones are not.
    """
    path = boost_cache_file(cfg.boost_folder(), model_path, cfg.max_length, cfg.pooling, run.precision)
    known_vectors, known = torch.zeros((0, unwrap(model).n_features)), {}
    if os.path.exists(path):
        try:
            stored = load_file(path)
            known_vectors = stored["vectors"]
            known = {bytes(d.tolist()): i for i, d in enumerate(stored["digests"])}
        except Exception as e:  # a damaged cache is only lost time: rebuild it
            print(f"warning: ignoring unreadable cache {path} ({e})", file=sys.stderr)
    digests = [text_digest(t, None if texts2 is None else texts2[i]) for i, t in enumerate(texts)]
    todo = sorted({i for i, d in enumerate(digests) if d not in known}, key=lambda i: digests[i])
    todo = list({digests[i]: i for i in todo}.values())  # duplicate texts are encoded once
    new_vectors = torch.zeros((0, known_vectors.shape[1]))
    if todo:
        started = time.perf_counter()
        subset = EncodedDataset([input_ids[i] for i in todo],
                                token_type_ids=None if token_type_ids is None else [token_type_ids[i] for i in todo])
        loader = torch.utils.data.DataLoader(
            subset, batch_sampler=BucketBatchSampler(subset.lengths(), 128, shuffle=False),
            collate_fn=Collator(tokenizer.pad_token_id or 0))
        encoder = unwrap(model).eval()
        out = torch.zeros((len(todo), known_vectors.shape[1]))
        for batch in tqdm(loader, desc="encoding for --boost", disable=not (run.is_main and on_terminal()),
                          leave=False):  # off a terminal a redrawn bar is noise in a log file
            batch = to_device(batch, run.device)
            with run.autocast():
                vectors = encoder.sentence_vector(batch["input_ids"], batch["attention_mask"],
                                                  batch.get("token_type_ids"))
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

