"""Where a training step's time goes: torch.profiler around train.py's own loop (bench/README.md, profile table).

    python bench/profile_train.py                       # 15 profiled steps, train.py's defaults, 2 threads
    python bench/profile_train.py --threads 1 --steps 30 -- --freeze_word_embeddings False   # flags after --
                                                                                             # go to train.py's Config
    python bench/profile_train.py --shapes --top 40      # one row per operator and input shapes (which casts, which mm)

The model, optimizer and batches are built by train.py's and engine.py's own functions from the first --rows rows
of data/train.csv (Ekman, single-label, batch 32, length buckets), as train.py builds them. One epoch over those
rows warms up and gives samples/s without the profiler; then --steps steps run under torch.profiler and the table
of operators by self CPU time is printed (share of the profiled operator time, calls, time per call).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1600, help="training rows (first rows of data/train.csv)")
    p.add_argument("--steps", type=int, default=15, help="training steps under the profiler")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = PyTorch's default, one per core)")
    p.add_argument("--top", type=int, default=22, help="operators to list")
    p.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    p.add_argument("train_flags", nargs="*", help="train.py flags (after --), e.g. --precision fp32")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    import train
    from dataset import BucketBatchSampler, Collator, class_counts, load_label_map, load_labelled_file
    from engine import build_optimizer, build_scheduler, train_one_epoch
    from losses import make_loss
    from runlog import EpochLog
    from runtime import setup_run
    if args.threads:
        torch.set_num_threads(args.threads)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = train.parse_config(["-d", os.path.join(root, "classes.json"), *args.train_flags])
    run = setup_run("cpu", cfg.precision)
    names = load_label_map(cfg.dict_path)
    data = load_labelled_file(os.path.join(root, "data", "train.csv"), cfg.text_col, cfg.label_col, names,
                             cfg.multi_label)
    data.texts, data.labels = data.texts[:args.rows], data.labels[:args.rows]
    train.seed_everything(cfg.seed)
    model, tokenizer, model_path = train.build_model(cfg, len(names), run)
    dataset = train.encode_rows(data, model, tokenizer, model_path, cfg, run)
    sampler = BucketBatchSampler(dataset.lengths(), cfg.batch_size, True, cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         collate_fn=Collator(tokenizer.pad_token_id or 0, len(names), cfg.multi_label))
    batches = list(loader)
    optimizer = build_optimizer(model, cfg.lr_main, cfg.lr, cfg.weight_decay, run.device)
    scheduler = build_scheduler(optimizer, len(batches) // 10, 2 * len(batches) + args.steps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # train.py enables it for fp16, a CUDA-only precision
    loss_fn = make_loss(cfg, class_counts(data.labels, len(names), cfg.multi_label), len(data.labels), run.device)

    def epoch(part, desc):
        return train_one_epoch(model, part, optimizer, scheduler, scaler, loss_fn, run, 1, cfg.max_grad_norm,
                               EpochLog(run, 10 ** 9, desc))
    epoch(batches[:5], "warm-up")
    started = time.perf_counter()
    stats = epoch(batches, "timed")
    print(f"precision {run.precision}, {torch.get_num_threads()} thread(s), {len(batches)} batches of "
          f"{cfg.batch_size}: {stats['samples'] / (time.perf_counter() - started):.1f} samples/s without the profiler")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        epoch(batches[:args.steps], "profiled")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
