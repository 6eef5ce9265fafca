"""Speed levers that train.py does not use, measured against its loop in one process (bench/README.md, issue 16).

    python bench/levers.py --lever bf16_weights          # encoder Linear weights in bf16, float32 master copies
    python bench/levers.py --lever compile_ffn           # torch.compile of the feed-forward blocks
    python bench/levers.py --lever bf16_weights --batches 4 --rounds 1 --bert_name TINY --max_length 32  # smoke test

Two models are built by train.py's own build_model (same checkpoint, same seed): one as train.py trains it (bf16
autocast where the CPU has it), one with the lever. Both train on the same --batches batches of 32 GoEmotions
sentences (data/train.csv, padded per batch), in alternating rounds, so that the machine's drift hits both alike;
each round prints both throughputs. A lever pays if its samples/s beat the reference's in every round by more
than the rounds differ among themselves.
"""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lever", choices=("bf16_weights", "compile_ffn"), required=True)
    p.add_argument("--batches", type=int, default=20, help="batches of 32 sentences per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--bert_name", default="", help="checkpoint (default: train.py's)")
    p.add_argument("--max_length", type=int, default=128)
    return p.parse_args(argv)


def bf16_weights(model, params: list):
    """The encoder's trainable Linear weights stored in bf16, AdamW on float32 master copies: returns (the optimizer
    step: gradients -> float32 masters, AdamW, masters -> bf16 weights; the masters)."""
    import torch
    low = [p for m in model.encoder.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
           if p.requires_grad]
    low_ids = {id(p) for p in low}
    masters = [p.detach().clone() for p in low]
    for p in low:
        p.data = p.data.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(masters + [p for p in params if id(p) not in low_ids], lr=1e-5, fused=True)

    def step():
        for master, p in zip(masters, low):
            master.grad, p.grad = None if p.grad is None else p.grad.float(), None  # the unused pooler has none
        optimizer.step()
        torch._foreach_copy_([p.data for p in low], masters)
        optimizer.zero_grad(set_to_none=True)
    return step, masters


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import train
    from runtime import setup_run
    flags = ["-d", os.path.join(ROOT, "classes.json"), "--max_length", str(args.max_length)] + (
        ["--bert_name", args.bert_name] if args.bert_name else [])
    cfg = train.parse_config(flags)
    run = setup_run("cpu", cfg.precision)
    models = {}
    for name in ("train.py", args.lever):
        torch.manual_seed(0)
        models[name], tokenizer, _ = train.build_model(cfg, 7, run)
    with open(os.path.join(ROOT, "data", "train.csv"), encoding="utf-8", newline="") as f:
        texts = [row["sentences"] for row in csv.DictReader(f)][:32 * args.batches]
    batches = []
    for start in range(0, len(texts), 32):
        batch = dict(tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=args.max_length,
                               return_tensors="pt"))
        batch.pop("token_type_ids", None)
        batches.append(batch)

    steps = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        if name == "bf16_weights":
            optimizer_step, _ = bf16_weights(model, params)
        else:
            if name == "compile_ffn":
                for layer in model.encoder.encoder.layer[:-1]:  # the last computes [CLS] only (first_token_only)
                    layer.intermediate.compile(dynamic=True)
                    layer.output.compile(dynamic=True)
            optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)

            def optimizer_step(optimizer=optimizer):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        def step(batch, model=model, optimizer_step=optimizer_step):
            with run.autocast():
                logits = model(**batch)
            logits.float().sum().backward()
            optimizer_step()
        model.train()
        started = time.perf_counter()
        for batch in batches[:3]:  # warm-up (and, for compile_ffn, compiling)
            step(batch)
        print(f"{name}: warm-up {time.perf_counter() - started:.1f}s", flush=True)
        steps[name] = step
    for round_ in range(1, args.rounds + 1):
        speeds = {}
        for name, step in steps.items():
            started = time.perf_counter()
            for batch in batches:
                step(batch)
            speeds[name] = len(batches) * 32 / (time.perf_counter() - started)
        print(f"round {round_}: " + ", ".join(f"{n} {s:.1f} samples/s" for n, s in speeds.items())
              + f"; {args.lever} / train.py {speeds[args.lever] / speeds['train.py']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
