"""Resource limits: out of memory halves the batch and doubles the accumulation (same rows per update), says so,
and stops with a clear error at a batch of 1. Simulated on CPU by a forward that raises torch.OutOfMemoryError."""
import os

import pytest
import torch

from conftest import call

OOM = torch.OutOfMemoryError


def fake_epoch(fail_at_micro_steps: set, log: dict):
    """A stand-in for engine.train_one_epoch that records micro-batches and updates; OOM on the listed attempts'
    steps."""
    def train_one_epoch(model, loader, optimizer, scheduler, scaler, loss_fn, run, accum, *rest):
        on_update = rest[-1]
        attempt = log.setdefault("attempts", 0)
        log["attempts"] += 1
        log.setdefault("accum", []).append(accum)
        pending = []
        batches = list(loader.batch_sampler)
        for step, batch in enumerate(batches):
            if (attempt, step) in fail_at_micro_steps:
                raise OOM("simulated")
            pending += batch
            log.setdefault("micro", []).append(len(batch))
            if (step + 1) % accum == 0 or step + 1 == len(batches):
                log.setdefault("updates", []).append(sorted(pending))
                pending = []
                on_update(step + 1)
        return {"loss": 0.0, "samples": 0, "tokens": 0, "seconds": 1.0}
    return train_one_epoch


class Quiet:
    device, world_size, rank = torch.device("cpu"), 1, 0

    def __init__(self):
        self.lines = []

    def print(self, line):
        self.lines.append(line)


def test_halving_keeps_the_rows_of_every_update(monkeypatch):
    import engine
    from config import Config
    from dataset import BucketBatchSampler
    from resume import Progress, StopRequest
    from train import Training
    cfg = Config(batch_size=8, gradient_accumulation_steps=2)
    sampler = BucketBatchSampler([5 + i % 7 for i in range(61)], 8, shuffle=True, seed=3)
    sampler.set_epoch(1)
    expected = [sorted(a + b) for a, b in zip(*[iter(sampler.global_batches() + [[]])] * 2)]
    log, run = {}, Quiet()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    training = Training(cfg, run, None, optimizer, None, None, None, list(range(61)), sampler, None, StopRequest(),
                        Progress())
    # attempt 0 fails in the 2nd micro-step of its 3rd update; attempt 1 (batches of 4) in its first step
    monkeypatch.setattr(engine, "train_one_epoch", fake_epoch({(0, 5), (1, 0)}, log))
    training.train_epoch(1)
    assert training.parts == 4 and log["accum"] == [2, 4, 8]
    assert log["updates"] == expected  # the interrupted update was redone whole, none twice
    assert training.progress.updates == len(expected)
    assert max(log["micro"][5:]) <= 2
    assert run.lines[0] == ("out of memory on cpu at batch size 8: batch size -> 4, gradient accumulation 2 -> 4 "
                            "(still 16 sentences per update); epoch 1 goes on from batch 5")
    assert run.lines[1].startswith("out of memory on cpu at batch size 4: batch size -> 2, gradient accumulation 4 -> 8")


def test_split_sampler_cuts_each_batch_into_parts():
    from dataset import SplitBatchSampler
    pieces = list(SplitBatchSampler([[1, 2, 3, 4, 5], [6]], 2))
    assert pieces == [[1, 2], [3, 4, 5], [6], [6]] and len(SplitBatchSampler([[1], [2]], 4)) == 8


def oom_forward(monkeypatch, when):
    """Make the training forward raise OOM when `when(rows)` is true; returns the batch sizes it saw."""
    from model import BertClassifier
    real, seen = BertClassifier.forward, []

    def forward(self, input_ids=None, attention_mask=None, features=None):
        if self.training:
            seen.append(len(input_ids))
            if when(len(input_ids), seen):
                raise OOM("CUDA out of memory (simulated)")
        return real(self, input_ids, attention_mask, features)
    monkeypatch.setattr(BertClassifier, "forward", forward)
    return seen


def test_train_recovers_from_one_out_of_memory(tiny_task, monkeypatch):
    import train
    seen = oom_forward(monkeypatch, lambda rows, seen: len(seen) == 3)
    code, out, err = call(train.main, tiny_task["args"] + ["--n_epochs", "2", "--precision", "fp32"])
    assert code == 0, err
    assert "out of memory on cpu at batch size 8: batch size -> 4, gradient accumulation 1 -> 2 " \
           "(still 8 sentences per update); epoch 1 goes on from batch 3" in out
    assert max(seen[3:]) <= 4 and max(seen[:3]) == 8  # and the second epoch stays at the halved size
    assert "done: best epoch" in out and os.path.exists(os.path.join(tiny_task["save"], "model.safetensors"))


def test_train_stops_clearly_at_a_batch_of_one(tiny_task, monkeypatch):
    import train
    oom_forward(monkeypatch, lambda rows, seen: True)
    code, out, err = call(train.main, tiny_task["args"] + ["--precision", "fp32"])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: out of memory on cpu with a batch of 1 sentence; lower --max_length "
                           "or use a smaller --bert_name")
    assert out.count("out of memory on cpu at batch size") == 3  # 8 -> 4 -> 2 -> 1, once per halving
    assert not os.path.exists(os.path.join(tiny_task["save"], "model.safetensors"))


@pytest.mark.parametrize("script", ["train", "predict"])
def test_max_length_above_the_model_is_refused(tiny_task, script):
    import predict
    import train
    if script == "train":
        code, _, err = call(train.main, tiny_task["args"] + ["--max_length", "65"])
    else:
        code, _, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", tiny_task["classes"], "--save_path",
                                           tiny_task["save"], "--max_length", "65"])
    assert code == 2
    assert ("supports at most 64 tokens" in err) if script == "train" else ("no trained model here" in err)
