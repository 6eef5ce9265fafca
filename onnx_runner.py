"""An export.py folder run by onnxruntime, behind the calls predict.py makes of a BertClassifier.

predict.py (and predict.load_classifier) load a folder holding export.json with `load_export`: the same CSVs,
length-sorted batches, streaming, reports and exit codes as with the PyTorch model, without torch in the forward.
"""
import json
import os

from config import InputError


class OnnxClassifier:
    """An export.py folder's graph (fp32, or int8) behind the calls predict.py makes of a BertClassifier: logits
    from tensors (run by onnxruntime on the CPU), the class count, the inputs it takes, the longest input it was
    made for."""

    def __init__(self, graph_path: str, inputs: list, n_classes: int, max_length: int):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        # the CPUs cpu_threads chose for this process (affinity, cgroup quota, SLURM), not every CPU of the node
        threads = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
        options.intra_op_num_threads = int(threads) if threads.isdigit() else 0
        self.session = onnxruntime.InferenceSession(graph_path, options, providers=["CPUExecutionProvider"])
        self.inputs, self.n_classes, self.max_length = inputs, n_classes, max_length

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        import torch
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        return torch.from_numpy(self.session.run(["logits"], {n: given[n].cpu().numpy() for n in self.inputs})[0])

    def takes_token_types(self, tokenizer) -> bool:
        return "token_type_ids" in self.inputs

    def length_limit(self, tokenizer) -> tuple:
        return self.max_length, "the --max_length the model was trained and exported with"


def load_export(folder: str, int8: bool = False) -> tuple:
    """(model, tokenizer, cfg, names, extra) of an export folder, as checkpoint.load_model gives them; `int8`
    takes the dynamically quantised graph (export.py --quantize int8) instead of the fp32 one."""
    from transformers import AutoTokenizer

    from config import load_config
    from dataset import load_label_map
    try:
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as f:
            report = json.load(f)
        if report.get("format") != "onnx":
            raise InputError(f"{folder}: a Hugging Face export ({report.get('format')}); load it with transformers' "
                             "AutoModelForSequenceClassification; predict.py reads train.py folders and ONNX exports")
        with open(os.path.join(folder, "calibration.json"), encoding="utf-8") as f:
            extra = json.load(f)
        cfg = load_config(os.path.join(folder, "train_config.json"))
        names = load_label_map(os.path.join(folder, "classes.json"))
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), trust_remote_code=False)
        graph = "model.int8.onnx" if int8 else "model.onnx"
        if graph not in report.get("graphs", {}):
            hint = "; make one with export.py --quantize int8" if int8 else ""
            raise InputError(f"{folder}: this export has no {graph}{hint}")
        model = OnnxClassifier(os.path.join(folder, graph), report["inputs"], len(names), cfg.max_length)
    except InputError:  # already says what is wrong, and where
        raise
    except (OSError, ValueError, KeyError) as e:  # onnxruntime's load errors are RuntimeErrors of their own
        raise InputError(f"{folder}: not a usable export ({str(e).splitlines()[0][:200]})")
    except Exception as e:
        raise InputError(f"{folder}/model.onnx: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})")
    return model, tokenizer, cfg, names, extra
