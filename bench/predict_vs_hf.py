"""Prediction speed of predict.py's path against transformers.pipeline("text-classification"), in one run.

    python bench/predict_vs_hf.py                         # trains a small model first (~1 min), 2,000 dev sentences
    python bench/predict_vs_hf.py --save_path saved_model --rows 4000 --batch_sizes 16,32,64,128,256,512

Both sides compute the same function of the same weights. The model must use --pooling pooler: then our
BertClassifier (encoder, pooler, dropout, linear) is exactly BertForSequenceClassification, and the bench copies
its weights into one (encoder.* -> bert.*, classifier.* divided by the calibration temperature T, since
predict.py writes softmax(logits / T)) for the pipeline. Without --save_path the bench
fine-tunes the embedded checkpoint for one epoch on --train_rows rows with --pooling pooler.
Contenders, on the first --rows sentences of data/dev.csv written as one CSV file:
  ours        predict.py's predict_file (CSV read, tokenise, sort by length, pad per batch, write the CSV) with
              predict.py's default batch and precision auto (bf16 on this CPU)
  ours_fp32   the same in fp32: its probabilities must agree with the pipeline's within 0.01
  ours_bN     ours with batch N (--batch_sizes), to choose predict.py's default batch
  pipeline    pipeline(model, tokenizer, batch_size=32, top_k=None, truncation=True, max_length=128), fp32
sentences/CPU-s divides by the process's CPU time instead: steadier on a machine shared with other jobs.
Timings exclude loading the model; ours includes reading and writing the CSV, the pipeline does no file I/O.
"""
import argparse
import csv
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, print_table, run_child, save_result, set_threads, write_slice


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="sentences to predict (first rows of data/dev.csv)")
    p.add_argument("--save_path", default="", help="a model trained by train.py with --pooling pooler "
                   "(default: train one on --train_rows rows)")
    p.add_argument("--train_rows", type=int, default=1000)
    p.add_argument("--batch_sizes", default="", help="extra batch sizes for our path, e.g. 16,64,128,256")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core); "
                   "on a machine shared with other jobs, 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--workdir", default="")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_ours(args, variant: str) -> dict:
    import numpy as np

    import predict
    from checkpoint import load_model
    from config import PREDICT_BATCH_SIZE
    from runtime import setup_run
    precision = "fp32" if variant == "ours_fp32" else "auto"
    batch = int(variant[len("ours_b"):]) if variant.startswith("ours_b") else PREDICT_BATCH_SIZE
    run = setup_run("cpu", precision)
    model, tokenizer, cfg, names, extra = load_model(args.model, run.device)
    cfg.batch_size, cfg.text_col = batch, "sentences"
    out = os.path.join(args.workdir, f"{variant}.csv")
    cpu_started = time.process_time()
    stats = predict.predict_file(os.path.join(args.workdir, "inputs", "dev.csv"), out, model, tokenizer, cfg,
                                 names, run, extra)
    cpu_seconds = time.process_time() - cpu_started
    with open(out, encoding="utf-8", newline="") as f:
        probs = [[float(x) for x in row[2:]] for row in list(csv.reader(f))[1:]]
    np.save(os.path.join(args.workdir, f"{variant}.npy"), np.asarray(probs, dtype=np.float32))
    return {"sentences_s": stats["rows"] / stats["seconds"], "tokens_s": stats["tokens"] / stats["seconds"],
            "sentences_cpu_s": stats["rows"] / cpu_seconds, "precision": run.precision, "batch": batch}


def hf_copy(model, names: list, temperature: float):
    """BertForSequenceClassification holding our encoder, pooler and head weights (pooling must be pooler), with
    the head divided by the calibration temperature, so that its softmax is predict.py's softmax(logits / T)."""
    from transformers import BertForSequenceClassification
    config = model.encoder.config
    config.num_labels, config.id2label = len(names), dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    hf = BertForSequenceClassification(config)
    state = dict(("bert." + k[len("encoder."):], v) if k.startswith("encoder.") else (k, v / temperature)  # head
                 for k, v in model.state_dict().items())
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return hf.eval()


def run_pipeline(args, variant: str) -> dict:
    import numpy as np
    import torch
    from transformers import pipeline

    from checkpoint import load_model
    from common import read_column
    model, tokenizer, cfg, names, extra = load_model(args.model, torch.device("cpu"))
    assert cfg.pooling == "pooler", f"{args.model}: trained with --pooling {cfg.pooling}; the bench needs pooler"
    hf = hf_copy(model, names, extra.get("temperature", 1.0))
    pipe = pipeline("text-classification", model=hf, tokenizer=tokenizer, device="cpu", batch_size=32,
                    top_k=None, truncation=True, max_length=cfg.max_length)
    texts = read_column(os.path.join(args.workdir, "inputs", "dev.csv"), "sentences")
    started, cpu_started = time.perf_counter(), time.process_time()
    outputs = pipe(texts)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    probs = np.zeros((len(texts), len(names)), dtype=np.float32)
    for row, scores in enumerate(outputs):
        for s in scores:
            probs[row, names.index(s["label"])] = s["score"]
    np.save(os.path.join(args.workdir, f"{variant}.npy"), probs)
    tokens = sum(len(x) for x in tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"])
    return {"sentences_s": len(texts) / seconds, "tokens_s": tokens / seconds,
            "sentences_cpu_s": len(texts) / cpu_seconds, "precision": "fp32", "batch": 32}


def train_small_model(args) -> str:
    import train
    save = os.path.join(args.workdir, "model")
    train_csv = os.path.join(args.workdir, "train.csv")
    write_slice(os.path.join(ROOT, "data", "train.csv"), train_csv, 0, args.train_rows)
    code = train.main(["-d", os.path.join(ROOT, "classes.json"), "-p", "False", "--train_path", train_csv,
                       "--n_epochs", "1", "--pooling", "pooler", "--save_path", save, "--log_every", "1000"])
    assert code == 0, f"train.py exited {code}"
    return save


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if args.variant:
        runner = run_pipeline if args.variant == "pipeline" else run_ours
        save_result(args.workdir, args.variant, runner(args, args.variant))
        return 0

    import numpy as np
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_predict_")
    os.makedirs(os.path.join(args.workdir, "inputs"), exist_ok=True)
    n = write_slice(os.path.join(ROOT, "data", "dev.csv"), os.path.join(args.workdir, "inputs", "dev.csv"), 0,
                    args.rows)
    print(f"predict_vs_hf: {n} sentences of data/dev.csv, max_length 128, {threads} CPU thread(s); "
          f"workdir {args.workdir}; load before: {load_average()}", flush=True)
    model = args.save_path or train_small_model(args)
    variants = ["ours", "ours_fp32", "pipeline"] + [f"ours_b{b}" for b in args.batch_sizes.split(",") if b]
    extra = ["--model", model, "--threads", str(args.threads)]
    results = {v: run_child(os.path.abspath(__file__), v, args.workdir, extra) for v in variants}
    reference = np.load(os.path.join(args.workdir, "pipeline.npy"))
    rows = []
    for v, r in results.items():
        probs = np.load(os.path.join(args.workdir, f"{v}.npy"))
        rows.append([v, r["precision"], r["batch"], f"{r['sentences_s']:.1f}", f"{r['tokens_s']:.0f}",
                     f"{r['sentences_cpu_s']:.1f}", f"{r['sentences_s'] / results['pipeline']['sentences_s']:.2f}x / "
                     f"{r['sentences_cpu_s'] / results['pipeline']['sentences_cpu_s']:.2f}x",
                     f"{np.abs(probs - reference).max():.5f}",
                     f"{100 * (probs.argmax(1) == reference.argmax(1)).mean():.2f}%", f"{r['peak_rss_mb']:.0f}"])
    print(f"load after: {load_average()}")
    print_table(["contender", "precision", "batch", "sentences/s", "tokens/s", "sentences/CPU-s",
                 "vs pipeline (wall / CPU)",
                 "max |p - p_pipeline|", "same argmax", "peak RSS MB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
