"""Export a model trained by train.py, to serve it without PyTorch or this tool.

    python export.py --save_path saved_model --format onnx --out exported/
    python export.py --save_path saved_model --out exported/ --quantize int8 --check data/dev.csv

--format onnx writes the whole classifier (encoder, pooling, head: logits out) as one ONNX graph, model.onnx, with
dynamic batch and sequence axes and only the inputs the model takes (input_ids, attention_mask, and token_type_ids
where the encoder reads them). --quantize int8 adds model.int8.onnx, onnxruntime's dynamic int8 quantisation of
it. The folder also holds the tokenizer, classes.json, calibration.json, train_config.json and export.json (the
inputs, and the parity measured). Every export checks itself before it is written under its final name: the
probabilities of each graph against PyTorch fp32 on a set of sentences (fp32 must agree within 1e-4), and with
--check the accuracy and macro-F1 of PyTorch, ONNX fp32 and ONNX int8 side by side. Needs onnx, onnxruntime and
onnxscript (pip install onnx onnxruntime onnxscript; requirements-dev.txt has them).
"""
import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from checkpoint import replace_folder
from config import Config, InputError, RunFault, build_parser, config_from_args, os_problem, run_cli
from long_text import window_spec

FP32_TOLERANCE = 1e-4
# Parity sentences when no --check file is given: short and long, plain and odd (digits, emoji, accents).
PARITY_TEXTS = ["ok", "I love this so much!", "This is the worst day of my life and nothing helps.",
                "meh", "Wow, 10/10 would recommend 😀", "Je ne sais pas, c'est bizarre.",
                "I'm not sure how I feel about the ending; it was sad, but also kind of hopeful in a way. " * 3,
                "thanks", "WHY would anyone do that???", "The meeting is at 3pm in room 204."]
COPIED = ("tokenizer", "classes.json", "calibration.json", "train_config.json")


def parse_export_config(argv=None) -> Config:
    parser = build_parser("export.py", ("export",), __doc__.split("\n\n")[0])
    parser.add_argument("--save_path", default=Config.save_path, help="model folder written by train.py")
    return config_from_args(parser.parse_args(argv))


def main(argv=None) -> int:
    cfg = parse_export_config(argv)
    if cfg.format == "hf" and cfg.quantize != "none":
        raise InputError(f"--quantize {cfg.quantize} quantises the ONNX graph: use it with --format onnx (a Hugging "
                         "Face folder holds the PyTorch weights as trained)")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise InputError(f"export.py needs onnx and onnxruntime ({e.name} is missing): "
                         "pip install onnx onnxruntime onnxscript")
    from checkpoint import load_model
    from ensemble import is_ensemble
    from runtime import setup_run
    if is_ensemble(cfg.save_path):
        raise InputError(f"--save_path {cfg.save_path}: an ensemble (train.py --ensemble True) is several models; "
                         f"export one of them (--save_path {os.path.join(cfg.save_path, 'members', '<name>')})")
    run = setup_run("cpu", "fp32")  # the reference the graphs are checked against
    model, tokenizer, trained, names, extra = load_model(cfg.save_path, run.device)
    import predict
    predict.attach_settings(cfg.save_path, trained, names, extra)
    trained.batch_size = 32
    texts, texts2, labels = parity_set(cfg, trained, names)
    reference = predict.predict_probabilities(model, tokenizer, texts, trained.max_length, 32, run,
                                              trained.multi_label, extra.get("temperature", 1.0), texts2=texts2,
                                              windows=window_spec(trained), tasks=predict.model_tasks(trained))
    out = os.path.abspath(cfg.out)
    if os.path.exists(out) and not os.path.isfile(os.path.join(out, "export.json")):
        raise InputError(f"--out {cfg.out}: the folder exists and is not an earlier export; choose another --out")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    except OSError as e:
        raise os_problem(e, f"--out {cfg.out}: cannot write there")
    try:
        build = build_hf_export if cfg.format == "hf" else build_export
        report = build(stage, cfg, model, tokenizer, trained, names, extra, reference, texts, texts2, labels)
        replace_folder(stage, out)
    except OSError as e:  # a full disk while writing the graphs: the earlier export at --out stays as it was
        raise os_problem(e, f"--out {cfg.out}: cannot write ({e.filename or stage})")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"exported to {cfg.out}: " + ", ".join(report["graphs"]))
    return 0


def predict_tasks(trained: Config) -> list:
    import predict
    return predict.model_tasks(trained)


def parity_set(cfg: Config, trained: Config, names: list) -> tuple:
    """(texts, texts2 or None, labels or None): --check's rows, else PARITY_TEXTS (paired with themselves
    reversed for a pair model)."""
    if cfg.check:
        import predict
        data = predict.load_truth(cfg.check, trained, names, predict_tasks(trained))
        # several tasks: the graphs are checked on the texts; the scores below are single-task only
        return data.texts, data.texts2, None if predict_tasks(trained) else data.labels
    if not trained.text_col2:
        return PARITY_TEXTS, None, None
    # a pair: each text with another; short ones where windows cap the second text's length
    second = [" ".join(t.split()[:4]) for t in PARITY_TEXTS] if trained.long_text == "windows" else PARITY_TEXTS
    return PARITY_TEXTS, second[::-1], None


def build_export(stage, cfg, model, tokenizer, trained, names, extra, reference, texts, texts2, labels) -> dict:
    """Write every file of the export into `stage`, after checking each graph against `reference` (PyTorch fp32's
    probabilities of `texts`); returns what export.json says."""
    inputs = export_graph(model, tokenizer, os.path.join(stage, "model.onnx"))
    graphs = {"model.onnx": "fp32"}
    if cfg.quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        # per-channel scales: as fast as one scale per matrix here, and closer to fp32 (bench/README.md: top class
        # agreeing on 97.9% of dev rows instead of 94.7%, max probability difference 0.20 instead of 0.30)
        quantize_dynamic(os.path.join(stage, "model.onnx"), os.path.join(stage, "model.int8.onnx"),
                         weight_type=QuantType.QInt8, per_channel=True)
        graphs["model.int8.onnx"] = "int8"
    report = {"format": "onnx", "inputs": inputs, "graphs": {}, "rows_checked": len(texts)}
    scores = {"pytorch fp32": reference}
    for name, kind in graphs.items():
        probs = onnx_probabilities(os.path.join(stage, name), tokenizer, texts, texts2, trained, extra, inputs,
                                   len(names))
        diff = float(np.abs(probs - reference).max())
        agree = float((probs.argmax(1) == reference.argmax(1)).mean())
        print(f"{name} ({kind}): max |probability difference| vs PyTorch fp32 {diff:.2e} on {len(texts)} texts, "
              f"top class agrees on {agree:.1%}")
        if kind == "fp32" and diff > FP32_TOLERANCE:
            raise RunFault(f"{name}: the exported graph differs from PyTorch by {diff:.2e} (more than "
                           f"{FP32_TOLERANCE}); nothing was written")
        report["graphs"][name] = {"precision": kind, "max_abs_difference": diff, "top_class_agreement": agree}
        scores[f"onnx {kind}"] = probs
    if labels is not None:
        print_scores(scores, labels, names, trained, extra)
    from label_groups import FOLDER_FILE
    for name in COPIED + ((FOLDER_FILE,) if trained._label_groups else ()):
        src = os.path.join(cfg.save_path, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(stage, name))
    with open(os.path.join(stage, "export.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def build_hf_export(stage, cfg, model, tokenizer, trained, names, extra, reference, texts, texts2, labels) -> dict:
    """A Hugging Face folder (BertForSequenceClassification, id2label, the temperature folded into the head), written
    only after its `pipeline("text-classification", top_k=None)` gave our calibrated probabilities."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    kind = model.encoder.config.model_type
    if predict_tasks(trained):
        raise InputError(f"--format hf: this model has several tasks ({trained.label_col}) on one encoder, and a "
                         "Hugging Face sequence classifier has one; export --format onnx")
    if trained._label_groups:
        raise InputError("--format hf: this model reads its classes out as groups (--label_groups), which a Hugging "
                         "Face sequence classifier does not do; export --format onnx")
    if trained.long_text == "windows":
        raise InputError("--format hf: this model reads long texts in windows (--long_text windows) and pools their "
                         "logits, which a Hugging Face sequence classifier does not do; export --format onnx")
    if trained.pooling != "pooler" or kind != "bert":
        raise InputError(f"--format hf: a Hugging Face sequence classifier computes our function only for a BERT "
                         f"encoder trained with --pooling pooler (this model: {kind}, --pooling {trained.pooling}); "
                         "train with --pooling pooler, or export --format onnx")
    config = copy.deepcopy(model.encoder.config)
    config.num_labels, config.id2label = len(names), dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    config.problem_type = "multi_label_classification" if trained.multi_label else "single_label_classification"
    hf = AutoModelForSequenceClassification.from_config(config).eval()
    hf.base_model.load_state_dict(model.encoder.state_dict())
    temperature = extra.get("temperature", 1.0)
    with torch.no_grad():  # softmax(z / T) and sigmoid(z / T): dividing the head's weights and bias by T is exact
        hf.classifier.weight.copy_(model.classifier.weight / temperature)
        hf.classifier.bias.copy_(model.classifier.bias / temperature)
    hf.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    classify = pipeline("text-classification", model=stage, tokenizer=stage, top_k=None, device="cpu")
    inputs = texts if texts2 is None else [{"text": a, "text_pair": b} for a, b in zip(texts, texts2)]
    scores = classify(inputs, truncation=True, max_length=trained.max_length)
    probs = np.array([[next(d["score"] for d in row if d["label"] == n) for n in names] for row in scores])
    diff = float(np.abs(probs - reference).max())
    print(f"Hugging Face pipeline: max |probability difference| vs ours {diff:.2e} on {len(texts)} texts")
    if diff > FP32_TOLERANCE:
        raise RunFault(f"--format hf: the pipeline's probabilities differ from ours by {diff:.2e}; nothing was written")
    report = {"format": "hf", "max_abs_difference": diff, "rows_checked": len(texts), "graphs": {"hf": {}}}
    with open(os.path.join(stage, "export.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def export_graph(model, tokenizer, path: str) -> list:
    """The classifier as one ONNX graph at `path` (logits out); returns its input names."""
    import onnx
    import torch

    from model import takes_token_types
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_token_types(model.encoder, tokenizer)
                                                else [])

    class Logits(torch.nn.Module):  # positional inputs, in `inputs` order, as the exporter wants them
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, *tensors):
            return self.classifier(**dict(zip(inputs, tensors)))
    example = tokenizer(["a first example", "and a second, longer example sentence"], ["b", "c"] if len(inputs) > 2
                        else None, padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants: the parity check below is the judge
        torch.onnx.export(Logits(model.eval()), tuple(example[n] for n in inputs), path, input_names=inputs,
                          output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    onnx.checker.check_model(path)
    return inputs


def onnx_probabilities(path, tokenizer, texts, texts2, trained, extra, inputs, n_classes: int) -> np.ndarray:
    """Calibrated probabilities of an ONNX graph, through predict.py's own tokenisation and length-sorted batches."""
    import predict
    from onnx_runner import OnnxClassifier
    from runtime import setup_run
    graph = OnnxClassifier(path, inputs, n_classes, trained.max_length)
    return predict.predict_probabilities(graph, tokenizer, texts, trained.max_length, 32, setup_run("cpu", "fp32"),
                                         trained.multi_label, extra.get("temperature", 1.0), texts2=texts2,
                                         windows=window_spec(trained), tasks=predict.model_tasks(trained))


def print_scores(scores: dict, labels: list, names: list, trained, extra) -> None:
    from metrics import evaluate_predictions
    print("on --check:  " + " | ".join(
        f"{what}: accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f}" for what, r in
        ((what, evaluate_predictions(p, labels, names, trained.multi_label, extra.get("thresholds")))
         for what, p in scores.items())))


if __name__ == "__main__":
    run_cli(main, whole_process=True)
