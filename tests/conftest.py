"""Shared fixtures: a tiny randomly initialised BERT (seconds to train on CPU) and small labelled files."""
import csv
import io
import json
import os
import random
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# A fixed thread count for every run of the suite, in-process and in subprocesses: cpu_threads.adapt() would
# otherwise lower it while this suite's own subprocesses compute, and the thread count changes float summation
# order, which the bitwise resume and reproducibility tests would see. tests/test_cpu_threads.py tests adapt().
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
SHARED = os.path.join(ROOT, "..", "shared")
NAMES = ["anger", "joy", "sadness"]
# Each class has its own words, so that even a tiny random model learns the task in one or two epochs.
WORDS = {"anger": ["furious", "rage", "hate", "angry"], "joy": ["happy", "great", "love", "wonderful"],
         "sadness": ["sad", "cry", "lonely", "miss"]}


def load_bench(name: str):
    """The module bench/<name>.py, imported from its file (bench/ is scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A local folder holding a 2-layer, hidden-32 BertModel with random weights and the real uncased vocab."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from config import EMBEDDED_MODEL, resolve_model_path
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# One small randomly initialised checkpoint per family seed 003 names (and the rest of issue 12's list): the
# transformers config of the family at hidden size 32, 2 layers, saved with the embedded checkpoint's tokenizer.
FAMILIES = {
    "bert": ("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64)),
    "distilbert": ("distilbert", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)),
    "roberta": ("roberta", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=66)),
    "xlm-roberta": ("xlm-roberta", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=66)),
    "electra": ("electra", dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64)),
    "deberta-v2": ("deberta-v2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64)),
    "albert": ("albert", dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64)),
    "mpnet": ("mpnet", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=66)),
    "modernbert": ("modernbert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64)),
    "xlnet": ("xlnet", dict(d_model=32, n_layer=2, n_head=2, d_inner=64)),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=2, n_positions=64)),
    "llama": ("llama", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            intermediate_size=64, max_position_embeddings=64)),
}
DECODERS = ("gpt2", "llama")  # their tokenizers have an end-of-text token and no pad token, as GPT-2's and Llama's


def tiny_checkpoint(folder, family: str) -> str:
    """Save a random tiny checkpoint of `family` (FAMILIES) with the embedded tokenizer into `folder`."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from config import EMBEDDED_MODEL, resolve_model_path
    model_type, sizes = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    if family in DECODERS:
        tokenizer.eos_token, tokenizer.pad_token = "[SEP]", None
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), pad_token_id=0,
                                  bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **sizes)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    """family name -> folder of its tiny checkpoint, built once per test session."""
    built = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = tiny_checkpoint(tmp_path_factory.mktemp(f"tiny_{family}"), family)
        return built[family]
    return get


def make_rows(n: int, seed: int = 0, names=NAMES) -> list:
    """n (sentence, class name) pairs, classes in turn, each sentence built from its class's words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        words = [rng.choice(WORDS.get(name, ["word"])) for _ in range(rng.randint(2, 9))]
        rows.append((" ".join(["i", "feel"] + words), name))
    return rows


def write_csv(path, rows, header=("sentences", "emotion")) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_classes(path, names=NAMES) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({n: i for i, n in enumerate(names)}, f)
    return str(path)


@pytest.fixture
def tiny_task(tmp_path, tiny_bert):
    """classes.json, train.csv (90 rows), an inputs/ folder and the train.py flags for the tiny model."""
    classes = write_classes(tmp_path / "classes.json")
    train = write_csv(tmp_path / "train.csv", make_rows(90))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", [(t,) for t, _ in make_rows(12, seed=1)], header=("sentences",))
    (inputs / "b.txt").write_text("\n".join(t for t, _ in make_rows(7, seed=2)) + "\n", encoding="utf-8")
    save = str(tmp_path / "model")
    args = ["-d", classes, "-p", "False", "--train_path", train, "--bert_name", tiny_bert, "--save_path", save,
            "--n_epochs", "2", "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3", "--max_length", "32"]
    return {"dir": tmp_path, "classes": classes, "train": train, "inputs": str(inputs), "save": save,
            "args": args}


def train_tiny(folder, tiny_bert, rows: int, epochs: int, *flags) -> tuple:
    """train.py on `rows` tiny-task rows into folder/model: (save_path, classes.json, stdout)."""
    import train
    classes = write_classes(folder / "classes.json")
    data = write_csv(folder / "train.csv", make_rows(rows))
    save = str(folder / "model")
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", data, "--bert_name", tiny_bert,
                                       "--save_path", save, "--n_epochs", str(epochs), "--max_length", "32", *flags])
    assert code == 0, err
    return save, classes, out


def call(main, argv):
    """Run an entry point in-process as the command line would: (exit code, stdout, stderr)."""
    from config import run_cli
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            run_cli(lambda: main(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def run_script(script, args, cwd=ROOT, timeout=600, env=None):
    """Run train.py or predict.py in a subprocess: what a user sees, tracebacks included."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
