"""Prediction speed of predict.py's path, of its ONNX exports and of Optimum against
transformers.pipeline("text-classification"), in one run, on the same sentences and the same weights.

    python bench/predict_vs_hf.py                         # trains a small model first (~1 min), 2,000 dev sentences
    python bench/predict_vs_hf.py --save_path saved_model --rows 4000 --batch_sizes 16,32,64,128,256,512
    bash bench/make_optimum_venv.sh                       # once: Optimum's own virtualenv, for its two rows

Both sides compute the same function of the same weights. The model must use --pooling pooler: then our
BertClassifier (encoder, pooler, dropout, linear) is exactly BertForSequenceClassification, and the bench copies
its weights into one (encoder.* -> bert.*, classifier.* divided by the calibration temperature T, since
predict.py writes softmax(logits / T)) for the pipeline. Without --save_path the bench
fine-tunes the embedded checkpoint for one epoch on --train_rows rows with --pooling pooler.
Contenders, on the first --rows sentences of data/dev.csv written as one CSV file:
  ours          predict.py's predict_file (CSV read, tokenise, sort by length, pad per batch, write the CSV) with
                predict.py's default batch and precision auto (bf16 on this CPU)
  ours_fp32     the same in fp32: its probabilities must agree with the pipeline's within 0.01
  ours_bN       ours with batch N (--batch_sizes), to choose predict.py's default batch
  onnx_fp32     the same predict_file on `export.py --quantize int8`'s folder, --precision fp32 (model.onnx)
  onnx_int8     the same, --precision int8 (model.int8.onnx, onnxruntime's dynamic quantisation)
  pipeline      pipeline(model, tokenizer, batch_size=32, top_k=None, truncation=True, max_length=128), fp32
  optimum_fp32  Optimum's ORTModelForSequenceClassification exported from `export.py --format hf`'s folder (the
                same weights), through the same pipeline call; optimum_int8 its AutoQuantizationConfig.avx512_vnni
                dynamic quantisation (bench/optimum_child.py; skipped, with a note, without Optimum's virtualenv)
sentences/CPU-s divides by the process's CPU time instead: steadier on a machine shared with other jobs.
Timings exclude loading the model; ours includes reading and writing the CSV, the pipeline does no file I/O.
macro-F1 is against data/dev.csv's labels (Ekman's 7 emotions). Latency: p50 and p99 of --latency_calls calls of one
sentence each (after 10 warm-up calls), through predict.load_classifier for ours and the ONNX graphs, through the
pipeline for Optimum.
"""
import argparse
import csv
import os
import subprocess
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
    p.add_argument("--latency_calls", type=int, default=200, help="single-sentence calls timed per contender")
    p.add_argument("--optimum_python", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            ".venv-optimum", "bin", "python"),
                   help="the Python of Optimum's virtualenv (bench/make_optimum_venv.sh)")
    p.add_argument("--workdir", default="")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_ours(args, variant: str) -> dict:
    import numpy as np

    import predict
    from config import PREDICT_BATCH_SIZE
    from runtime import setup_run
    precision = {"ours_fp32": "fp32", "onnx_fp32": "fp32", "onnx_int8": "int8"}.get(variant, "auto")
    batch = int(variant[len("ours_b"):]) if variant.startswith("ours_b") else PREDICT_BATCH_SIZE
    folder = os.path.join(args.workdir, "exported") if variant.startswith("onnx") else args.model
    run = setup_run("cpu", precision)
    model, tokenizer, cfg, names, extra = predict.load_any_model(folder, run.device, run.precision)
    cfg.batch_size, cfg.text_col = batch, "sentences"
    out = os.path.join(args.workdir, f"{variant}.csv")
    cpu_started = time.process_time()
    stats = predict.predict_file(os.path.join(args.workdir, "inputs", "dev.csv"), out, model, tokenizer, cfg,
                                 names, run, extra)
    cpu_seconds = time.process_time() - cpu_started
    with open(out, encoding="utf-8", newline="") as f:
        probs = [[float(x) for x in row[2:]] for row in list(csv.reader(f))[1:]]
    np.save(os.path.join(args.workdir, f"{variant}.npy"), np.asarray(probs, dtype=np.float32))
    result = {"sentences_s": stats["rows"] / stats["seconds"], "tokens_s": stats["tokens"] / stats["seconds"],
              "sentences_cpu_s": stats["rows"] / cpu_seconds, "precision": run.precision, "batch": batch}
    if not variant.startswith("ours_b"):
        clf = predict.Classifier(model, tokenizer, cfg, names, extra, run)
        result.update(single_sentence_latency(clf.predict, args))
    return result


def single_sentence_latency(predict_one, args) -> dict:
    """p50 and p99 milliseconds of `predict_one([sentence])` over --latency_calls sentences, after 10 warm-up calls."""
    import numpy as np

    from common import read_column
    texts = read_column(os.path.join(args.workdir, "inputs", "dev.csv"), "sentences")
    seconds = []
    for text in texts[:10] + texts[:args.latency_calls]:
        started = time.perf_counter()
        predict_one([text])
        seconds.append(time.perf_counter() - started)
    ms = np.array(seconds[10:]) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


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
    from common import read_column, timed_pipeline
    model, tokenizer, cfg, names, extra = load_model(args.model, torch.device("cpu"))
    assert cfg.pooling == "pooler", f"{args.model}: trained with --pooling {cfg.pooling}; the bench needs pooler"
    hf = hf_copy(model, names, extra.get("temperature", 1.0))
    pipe = pipeline("text-classification", model=hf, tokenizer=tokenizer, device="cpu", batch_size=32,
                    top_k=None, truncation=True, max_length=cfg.max_length)
    texts = read_column(os.path.join(args.workdir, "inputs", "dev.csv"), "sentences")
    probs, seconds, cpu_seconds = timed_pipeline(pipe, texts, names)
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


def prepare_exports(args, model: str) -> bool:
    """export.py's ONNX folder (fp32 and int8) and Hugging Face folder of `model`, for the ONNX and Optimum rows;
    returns whether Optimum's virtualenv is there to run its rows."""
    for flags, name in ((["--quantize", "int8"], "exported"), (["--format", "hf"], "hf")):
        code = subprocess.call([sys.executable, os.path.join(ROOT, "export.py"), "--save_path", model, *flags,
                                "--out", os.path.join(args.workdir, name)], stdout=subprocess.DEVNULL, cwd=ROOT)
        assert code == 0, f"export.py {' '.join(flags)} exited {code}"
    if os.path.isfile(args.optimum_python):
        return True
    print(f"note: no {args.optimum_python}: the Optimum rows are skipped (bash bench/make_optimum_venv.sh makes it)")
    return False


def table_row(variant: str, r: dict, results: dict, reference, labels, names: list) -> list:
    import numpy as np
    from sklearn.metrics import f1_score
    probs = np.load(os.path.join(results["_workdir"], f"{variant}.npy"))
    pipe = results["pipeline"]
    f1 = f1_score(labels, probs.argmax(1), average="macro", labels=list(range(len(names))), zero_division=0)
    latency = f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" if "p50_ms" in r else ""
    return [variant, r["precision"], r["batch"], f"{r['sentences_s']:.1f}", f"{r['sentences_cpu_s']:.1f}",
            f"{r['sentences_s'] / pipe['sentences_s']:.2f}x / {r['sentences_cpu_s'] / pipe['sentences_cpu_s']:.2f}x",
            f"{np.abs(probs - reference).max():.5f}", f"{100 * (probs.argmax(1) == reference.argmax(1)).mean():.2f}%",
            f"{f1:.4f}", latency, f"{r['peak_rss_mb']:.0f}"]


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if args.variant:
        runner = run_pipeline if args.variant == "pipeline" else run_ours
        save_result(args.workdir, args.variant, runner(args, args.variant))
        return 0

    import numpy as np

    from common import read_column
    from dataset import load_label_map
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_predict_")
    os.makedirs(os.path.join(args.workdir, "inputs"), exist_ok=True)
    dev = os.path.join(args.workdir, "inputs", "dev.csv")
    n = write_slice(os.path.join(ROOT, "data", "dev.csv"), dev, 0, args.rows)
    print(f"predict_vs_hf: {n} sentences of data/dev.csv, max_length 128, {threads} CPU thread(s); "
          f"workdir {args.workdir}; load before: {load_average()}", flush=True)
    model = args.save_path or train_small_model(args)
    optimum = prepare_exports(args, model)
    variants = ["ours", "ours_fp32", "onnx_fp32", "onnx_int8", "pipeline"]
    variants += [f"ours_b{b}" for b in args.batch_sizes.split(",") if b]
    extra = ["--model", model, "--threads", str(args.threads), "--latency_calls", str(args.latency_calls)]
    results = {v: run_child(os.path.abspath(__file__), v, args.workdir, extra) for v in variants}
    if optimum:
        for v in ("optimum_fp32", "optimum_int8"):
            results[v] = run_child(os.path.join(ROOT, "bench", "optimum_child.py"), v, args.workdir,
                                   ["--hf_folder", os.path.join(args.workdir, "hf"),
                                    "--latency_calls", str(args.latency_calls)], python=args.optimum_python)
    names = load_label_map(os.path.join(ROOT, "classes.json"))
    labels = [names.index(x) for x in read_column(dev, "emotion")]
    reference = np.load(os.path.join(args.workdir, "pipeline.npy"))
    results["_workdir"] = args.workdir
    rows = [table_row(v, r, results, reference, labels, names) for v, r in results.items() if v != "_workdir"]
    print(f"load after: {load_average()}")
    print_table(["contender", "precision", "batch", "sentences/s", "sentences/CPU-s", "vs pipeline (wall / CPU)",
                 "max |p - p_pipeline|", "same argmax", "macro-F1", "1-sentence p50 / p99 ms", "peak RSS MB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
