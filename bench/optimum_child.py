"""One Optimum contender of bench/predict_vs_hf.py, run by the Python of Optimum's own virtualenv.

Optimum's onnxruntime integration (optimum-onnx) pins transformers 4.x, which this project does not run on, so it
lives in a virtualenv of its own (bench/make_optimum_venv.sh) and this script imports nothing of the project
(only bench/common.py, which needs the standard library).
It does what an Optimum user does with a Hugging Face folder (export.py --format hf, the same weights and
calibrated head as ours): ORTModelForSequenceClassification.from_pretrained(folder, export=True), for int8
ORTQuantizer with AutoQuantizationConfig.avx512_vnni(is_static=False) (dynamic quantisation, the recipe
Optimum's documentation gives for this CPU), then transformers' pipeline("text-classification", top_k=None,
batch_size=32) over the sentences. Writes variant.npy (probabilities, class order of classes.json) and
variant.json (speed, peak memory), as bench/common.py's children do.
"""
import argparse
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import timed_pipeline  # standard library only at import: safe in Optimum's virtualenv


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def load_model(hf_folder: str, workdir: str, int8: bool):
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    onnx_dir = os.path.join(workdir, "optimum_onnx")
    if not os.path.isdir(onnx_dir):
        ORTModelForSequenceClassification.from_pretrained(hf_folder, export=True).save_pretrained(onnx_dir)
    if not int8:
        return ORTModelForSequenceClassification.from_pretrained(onnx_dir)
    int8_dir = os.path.join(workdir, "optimum_int8")
    if not os.path.isdir(int8_dir):
        quantizer = ORTQuantizer.from_pretrained(onnx_dir)
        quantizer.quantize(save_dir=int8_dir, quantization_config=AutoQuantizationConfig.avx512_vnni(
            is_static=False, per_channel=False))
    return ORTModelForSequenceClassification.from_pretrained(int8_dir, file_name="model_quantized.onnx")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True)  # optimum_fp32 or optimum_int8
    p.add_argument("--workdir", required=True)
    p.add_argument("--hf_folder", required=True)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--latency_calls", type=int, default=200)
    args = p.parse_args()
    import numpy as np
    from transformers import AutoTokenizer, pipeline
    tokenizer = AutoTokenizer.from_pretrained(args.hf_folder)
    model = load_model(args.hf_folder, args.workdir, args.variant.endswith("int8"))
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None, batch_size=32,
                    truncation=True, max_length=args.max_length)
    with open(os.path.join(args.workdir, "inputs", "dev.csv"), encoding="utf-8", newline="") as f:
        texts = [row["sentences"] for row in csv.DictReader(f)]
    probs, seconds, cpu_seconds = timed_pipeline(pipe, texts, names)
    np.save(os.path.join(args.workdir, f"{args.variant}.npy"), probs)
    latencies = []
    for text in texts[:10] + texts[:args.latency_calls]:  # 10 warm-up calls, not counted
        t = time.perf_counter()
        pipe(text)
        latencies.append(time.perf_counter() - t)
    latencies = np.array(latencies[10:]) * 1000
    tokens = sum(len(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"])
    result = {"sentences_s": len(texts) / seconds, "tokens_s": tokens / seconds,
              "sentences_cpu_s": len(texts) / cpu_seconds, "precision": args.variant.split("_")[1], "batch": 32,
              "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
              "peak_rss_mb": peak_rss_mb()}
    with open(os.path.join(args.workdir, f"{args.variant}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
