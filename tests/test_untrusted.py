"""Untrusted model folders: nothing in them runs, and a folder that does not match what was saved is refused.

The payload is a pickle whose __reduce__ creates a marker file: if anything unpickles it, the marker appears.
"""
import glob
import json
import os
import pickle
import re
import shutil

import pytest

from conftest import ROOT, call, make_rows, train_tiny, write_classes, write_csv


class Payload:
    """Unpickling this creates `marker`: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_payload_is_live(tmp_path):
    """The checks below mean something only if unpickling the payload really runs code."""
    pickle.loads(pickle.dumps(Payload(str(tmp_path / "ran"))))
    assert os.path.exists(tmp_path / "ran")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("untrusted")
    (folder / "in").mkdir()
    (folder / "in" / "a.txt").write_text("i feel happy\n", encoding="utf-8")
    save, classes, _ = train_tiny(folder, tiny_bert, 60, 1, "--batch_size", "16", "--precision", "fp32")
    return {"classes": classes, "save": save, "inputs": str(folder / "in")}


@pytest.fixture
def model_copy(tmp_path, trained):
    folder = str(tmp_path / "model")
    shutil.copytree(trained["save"], folder)
    return folder


def rehash(folder, name):
    """Update the manifest as an attacker who controls the whole folder would."""
    from checkpoint import MANIFEST, sha256_file
    path = os.path.join(folder, MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    manifest["files"][name] = sha256_file(os.path.join(folder, name))
    with open(path, "w") as f:
        json.dump(manifest, f)


def predict_with(trained, folder, tmp_path):
    import predict
    return call(predict.main, ["-f", trained["inputs"], "-d", trained["classes"], "-p", "False", "--save_path",
                               folder, "--out_dir", str(tmp_path / "out"), "--precision", "fp32"])


def assert_refused(result, expected, marker, tmp_path):
    code, out, err = result
    assert code == 2, (out, err)
    assert expected in err, err
    assert "Traceback" not in err
    assert not os.path.exists(marker), "code planted in the checkpoint ran"
    assert not os.path.exists(tmp_path / "out")


def test_pickle_as_weights_is_refused_by_hash(tmp_path, trained, model_copy):
    marker = str(tmp_path / "ran")
    with open(os.path.join(model_copy, "model.safetensors"), "wb") as f:
        pickle.dump(Payload(marker), f)
    assert_refused(predict_with(trained, model_copy, tmp_path),
                   "model.safetensors: does not match the hash recorded when it was saved", marker, tmp_path)


def test_pickle_as_weights_with_a_forged_manifest_is_never_unpickled(tmp_path, trained, model_copy):
    marker = str(tmp_path / "ran")
    with open(os.path.join(model_copy, "model.safetensors"), "wb") as f:
        pickle.dump(Payload(marker), f)
    rehash(model_copy, "model.safetensors")
    assert_refused(predict_with(trained, model_copy, tmp_path),
                   "model.safetensors: not a valid safetensors file", marker, tmp_path)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "tokenizer/extra.pkl"])
def test_pickle_beside_the_weights_is_refused(tmp_path, trained, model_copy, name):
    import torch
    marker = str(tmp_path / "ran")
    with open(os.path.join(model_copy, name), "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)
    assert_refused(predict_with(trained, model_copy, tmp_path), f"{name}: pickle-based file in the model folder",
                   marker, tmp_path)
    with pytest.raises(pickle.UnpicklingError):  # the payload is live: torch's safe loader refuses it too
        torch.load(os.path.join(model_copy, name), weights_only=True)
    assert not os.path.exists(marker)


def test_tampered_file_is_refused(tmp_path, trained, model_copy):
    path = os.path.join(model_copy, "train_config.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace('"max_length": 32', '"max_length": 33'))
    assert_refused(predict_with(trained, model_copy, tmp_path),
                   "train_config.json: does not match the hash recorded when it was saved", "/nonexistent", tmp_path)


def test_missing_file_is_refused(tmp_path, trained, model_copy):
    os.remove(os.path.join(model_copy, "classes.json"))
    assert_refused(predict_with(trained, model_copy, tmp_path), "classes.json: is missing", "/nonexistent", tmp_path)


def test_shape_mismatch_is_refused(tmp_path, trained, model_copy):
    path = os.path.join(model_copy, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["hidden_size"], config["num_attention_heads"] = 64, 2
    with open(path, "w") as f:
        json.dump(config, f)
    rehash(model_copy, "config.json")
    assert_refused(predict_with(trained, model_copy, tmp_path),
                   "model.safetensors: weights do not fit the saved architecture", "/nonexistent", tmp_path)


def test_remote_code_in_the_config_never_runs(tmp_path, trained, model_copy):
    marker = str(tmp_path / "ran")
    with open(os.path.join(model_copy, "evil.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').close()\nfrom transformers import BertConfig as EvilConfig\n")
    path = os.path.join(model_copy, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"})
    with open(path, "w") as f:
        json.dump(config, f)
    rehash(model_copy, "config.json")
    code, out, err = predict_with(trained, model_copy, tmp_path)
    assert_refused((code, out, err), "cannot rebuild the encoder or tokenizer", marker, tmp_path)


def test_manifest_naming_files_outside_the_folder_is_refused(tmp_path, trained, model_copy):
    from checkpoint import MANIFEST
    path = os.path.join(model_copy, MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    manifest["files"]["../outside.txt"] = "0" * 64
    with open(path, "w") as f:
        json.dump(manifest, f)
    assert_refused(predict_with(trained, model_copy, tmp_path),
                   "unreadable manifest (file name '../outside.txt' points outside the model folder)",
                   "/nonexistent", tmp_path)


def test_pickled_encoder_given_to_train_is_not_executed(tmp_path, tiny_bert):
    """--bert_name pointing at a folder whose only weights are a pickle: refused, never unpickled."""
    import train
    marker = str(tmp_path / "ran")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    for name in os.listdir(tiny_bert):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_bert, name), encoder / name)
    with open(encoder / "pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(marker), f, protocol=2)  # the protocol torch.save writes
    classes = write_classes(tmp_path / "classes.json")
    data = write_csv(tmp_path / "train.csv", make_rows(30))
    code, out, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", str(encoder),
                                       "--save_path", str(tmp_path / "model"), "--precision", "fp32"])
    assert code == 2 and f"--bert_name {encoder}: refused by torch's weights-only loader" in err, err
    assert "Traceback" not in err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "model")


def test_the_code_never_opts_into_unsafe_loading():
    """No trust_remote_code=True, no torch.load without weights_only=True, no pickle, in the tool's code."""
    for path in glob.glob(os.path.join(ROOT, "*.py")):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        assert not re.search(r"trust_remote_code\s*=\s*True", source), path
        assert not re.search(r"pickle\.loads?\(|Unpickler\(|import dill|import joblib", source), path
        for call_text in re.findall(r"torch\.load\(.*", source):  # the rest of the line: calls nest parentheses
            assert "weights_only=True" in call_text, (path, call_text)
