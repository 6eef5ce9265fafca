"""The speed-ups that could break quietly: buckets, per-batch padding, sorted prediction, the --boost cache, bf16."""
import csv
import random

import numpy as np
import pytest
import torch

from conftest import call, make_rows, train_tiny, write_csv


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """A tiny model trained for two epochs by train.py: (model folder, tmp folder)."""
    folder = tmp_path_factory.mktemp("speed")
    save, _, _ = train_tiny(folder, tiny_bert, 90, 2, "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3",
                            "--precision", "fp32")
    return save, folder


def sentences(n: int, seed: int = 3) -> list:
    """Sentences of very different lengths, so that sorting and padding matter."""
    rng = random.Random(seed)
    words = ["i", "feel", "happy", "sad", "furious", "today", "because", "of", "the", "weather", "and", "you"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 25))) for _ in range(n)]


# ------------------------------------------------------------------------------------------------- sampler
def epoch_rows(sampler) -> list:
    return [i for batch in sampler for i in batch]


def test_buckets_yield_every_row_once_in_a_new_order_per_epoch_and_seed():
    from dataset import BucketBatchSampler
    lengths = [random.Random(i).randint(3, 60) for i in range(1001)]
    sampler = BucketBatchSampler(lengths, 8, shuffle=True, seed=1)
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        rows = epoch_rows(sampler)
        assert sorted(rows) == list(range(len(lengths)))
        assert len(list(sampler)) == len(sampler)
        orders.append(rows)
    assert orders[0] != orders[1]
    other_seed = BucketBatchSampler(lengths, 8, shuffle=True, seed=2)
    other_seed.set_epoch(1)
    assert epoch_rows(other_seed) != orders[0]
    again = BucketBatchSampler(lengths, 8, shuffle=True, seed=1)
    again.set_epoch(1)
    assert epoch_rows(again) == orders[0]  # the same seed and epoch give the same batches (resumable)


def test_buckets_cut_padding_and_still_mix_lengths_across_batches():
    from dataset import BucketBatchSampler
    lengths = [random.Random(i).randint(3, 60) for i in range(2000)]

    def padded_tokens(window):
        sampler = BucketBatchSampler(lengths, 16, shuffle=True, seed=0, window_batches=window)
        batches = list(sampler)
        return sum(len(b) * max(lengths[i] for i in b) for b in batches), batches
    plain, _ = padded_tokens(1)
    bucketed, batches = padded_tokens(16)
    assert bucketed < 0.8 * plain
    # batches come in shuffled order, not from shortest to longest
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


# ------------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "pooler"])
def test_padded_batch_gives_the_logits_of_each_sentence_alone(tiny_bert, pooling):
    from transformers import AutoTokenizer

    from dataset import Collator, EncodedDataset, tokenize
    from model import BertClassifier, load_pretrained_encoder
    torch.manual_seed(0)
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3, pooling).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids, _ = tokenize(tokenizer, sentences(6), 32)
    assert len({len(x) for x in ids}) > 2
    batch = Collator(tokenizer.pad_token_id)([EncodedDataset(ids)[i] for i in range(len(ids))])
    with torch.inference_mode():
        together = model(batch["input_ids"], batch["attention_mask"])  # (6, 3), padded to the longest
        for row, one in enumerate(ids):
            alone = model(torch.tensor([one]), torch.ones((1, len(one)), dtype=torch.long))
            torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- prediction
def cpu_run(precision: str = "fp32"):
    from runtime import Run
    return Run(torch.device("cpu"), precision)


def test_sorted_prediction_comes_back_in_input_order(trained):
    from checkpoint import load_model
    from predict import predict_probabilities
    model, tokenizer, cfg, names, _ = load_model(trained[0], torch.device("cpu"))
    texts = sentences(37)
    stats = {}
    probs = predict_probabilities(model, tokenizer, texts, 32, 4, cpu_run(), False, stats=stats)
    one_by_one = [predict_probabilities(model, tokenizer, [t], 32, 1, cpu_run(), False)[0] for t in texts]
    assert probs.shape == (37, len(names))
    assert abs(probs - np.stack(one_by_one)).max() < 1e-5
    assert stats["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in texts)


def test_predict_writes_rows_in_input_order_and_reports_tokens_per_s(trained, monkeypatch):
    import predict
    save, folder = trained
    texts = sentences(50, seed=8)
    inputs = folder / "inputs_order"
    inputs.mkdir()
    write_csv(inputs / "mixed.csv", [(t,) for t in texts], header=("sentences",))
    monkeypatch.setattr(predict, "CHUNK_ROWS", 16)  # several chunks, each sorted on its own
    out = folder / "preds_order"
    code, stdout, err = call(predict.main, ["-f", str(inputs), "-d", str(folder / "classes.json"), "-p", "False",
                                            "--save_path", save, "--out_dir", str(out), "--batch_size", "8"])
    assert code == 0, err
    with open(out / "mixed.csv", encoding="utf-8", newline="") as f:
        assert [row["sentences"] for row in csv.DictReader(f)] == texts
    assert "tokens/s" in stdout.splitlines()[-1]


def test_bf16_and_fp32_predictions_agree_on_nearly_every_argmax(trained):
    from checkpoint import load_model
    from predict import predict_probabilities
    model, tokenizer, cfg, names, _ = load_model(trained[0], torch.device("cpu"))
    texts = [t for t, _ in make_rows(120, seed=5)]
    fp32 = predict_probabilities(model, tokenizer, texts, 32, 16, cpu_run("fp32"), False)
    bf16 = predict_probabilities(model, tokenizer, texts, 32, 16, cpu_run("bf16"), False)
    assert (fp32.argmax(1) == bf16.argmax(1)).mean() >= 0.95
    assert abs(fp32 - bf16).max() < 0.1  # bf16 has ~3 significant digits, not a different model


# -------------------------------------------------------------------------------------------- --boost cache
class Encoded:
    """Counts the sentences the encoder really encodes."""

    def __init__(self, model):
        self.rows, self.forward = 0, model.sentence_vector
        model.sentence_vector = self

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        self.rows += len(input_ids)
        return self.forward(input_ids, attention_mask, token_type_ids)


def boost_vectors(model_path, save_path, texts, max_length=32, pooling="cls"):
    """(vectors, rows encoded) from boost_cache.cached_sentence_vectors with a fresh model of model_path."""
    from transformers import AutoTokenizer

    from boost_cache import cached_sentence_vectors
    from config import Config
    from dataset import tokenize
    from model import BertClassifier, load_pretrained_encoder
    model = BertClassifier(load_pretrained_encoder(model_path), 3, pooling)
    model.freeze_encoder()
    counter = Encoded(model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    cfg = Config(save_path=str(save_path), max_length=max_length, pooling=pooling)
    vectors = cached_sentence_vectors(model, tokenizer, texts, tokenize(tokenizer, texts, max_length)[0], cfg,
                                      model_path, cpu_run())
    return vectors, counter.rows


def test_boost_cache_is_reused_and_invalidated_by_checkpoint_length_and_text(tiny_bert, tmp_path):
    import shutil
    texts = sentences(20)
    first, encoded = boost_vectors(tiny_bert, tmp_path, texts)
    assert encoded == len(set(texts))
    again, encoded = boost_vectors(tiny_bert, tmp_path, texts)
    assert encoded == 0
    torch.testing.assert_close(again, first)
    # one sentence edited: only it is encoded, the others come from the cache
    edited = texts[:5] + [texts[5] + " indeed"] + texts[6:]
    vectors, encoded = boost_vectors(tiny_bert, tmp_path, edited)
    assert encoded == 1
    torch.testing.assert_close(vectors[:5], first[:5])
    assert not torch.allclose(vectors[5], first[5])
    # another max_length: everything again
    _, encoded = boost_vectors(tiny_bert, tmp_path, texts, max_length=8)
    assert encoded == len(set(texts))
    # another checkpoint (same architecture, other weights): everything again, and different vectors
    other = tmp_path / "other_bert"
    shutil.copytree(tiny_bert, other)
    from transformers import BertModel
    torch.manual_seed(1)
    BertModel(BertModel.from_pretrained(tiny_bert).config).save_pretrained(other)
    changed, encoded = boost_vectors(str(other), tmp_path, texts)
    assert encoded == len(set(texts))
    assert not torch.allclose(changed, first)
    # the cached vectors are those the encoder computes for each sentence alone
    from transformers import AutoTokenizer

    from model import BertClassifier, load_pretrained_encoder
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    with torch.inference_mode():
        for row in (0, 7, 19):
            enc = tokenizer([texts[row]], truncation=True, max_length=32, return_tensors="pt")
            alone = model.sentence_vector(enc["input_ids"], enc["attention_mask"])[0]
            torch.testing.assert_close(first[row], alone, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------- fast dropout
def test_fast_dropout_drops_p_of_the_elements_unbiased_and_masks_the_gradient_alike():
    from fast_encoder import FastDropout
    torch.manual_seed(0)
    x = torch.full((400, 1000), 2.0, requires_grad=True)
    layer = FastDropout(0.1)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 400,000 draws: 0.1 +- 5 standard deviations
    assert abs(y.mean().item() - 2.0) < 0.01  # scaled by 1/(1-p): the expected value is the input's
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(2 * 32768 / (32768 - 3277))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient flows exactly where the value did
    second = layer(x.detach())
    assert not torch.equal(second == 0, y == 0)  # a new mask per call
    layer.eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(FastDropout(0.0)(x), x)


def test_fast_dropout_masks_use_every_lane_of_the_random_words():
    """Four elements share one 64-bit draw; each of the four positions must be dropped at rate p."""
    from fast_encoder import fast_dropout
    torch.manual_seed(1)
    y = fast_dropout(torch.ones(200_000, 4), 0.25, True)
    rates = (y == 0).float().mean(0)
    assert torch.all((rates - 0.25).abs() < 0.006), rates


def test_fast_dropout_follows_the_seed():
    from fast_encoder import fast_dropout
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a = fast_dropout(x, 0.1, True)
    torch.manual_seed(5)
    assert torch.equal(a, fast_dropout(x, 0.1, True))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_encoder_with_fast_dropout_computes_what_sdpa_does(tiny_bert, precision):
    """Evaluation runs the same code; in training, with a drop rate that rounds to zero, the written-out
    attention equals SDPA's on padded batches, forward and backward."""
    from fast_encoder import FAST_ATTENTION, fast_training_encoder
    from model import load_pretrained_encoder
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    plain, fast = load_pretrained_encoder(tiny_bert), fast_training_encoder(load_pretrained_encoder(tiny_bert))
    assert fast.config._attn_implementation == FAST_ATTENTION
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    ids = torch.randint(1000, 5000, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 9:] = 0
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for m in (plain, fast):
        m.eval()
    with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"), torch.no_grad():
        assert torch.equal(plain(input_ids=ids, attention_mask=mask).last_hidden_state,
                           fast(input_ids=ids, attention_mask=mask).last_hidden_state)
    layer = fast.encoder.layer[0].attention.self
    layer.train()
    q, k, v = (torch.randn(3, 2, 11, 16, requires_grad=True) for _ in range(3))
    bool_mask = mask.bool()[:, None, None, :].expand(3, 1, 11, 11)
    from fast_encoder import sdpa_fast_dropout
    got, _ = sdpa_fast_dropout(layer, q, k, v, bool_mask, scaling=0.25, dropout=1e-9)  # threshold 0: keep all
    want, _ = sdpa_attention_forward(layer, q, k, v, bool_mask, scaling=0.25, dropout=0.0)
    assert torch.allclose(got, want, atol=1e-5)
    grads = torch.autograd.grad(got.sum(), (q, k, v))
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q, k, v))):
        assert torch.allclose(g, w, atol=1e-5)


def test_attention_dropout_drops_weights_in_training(tiny_bert):
    from fast_encoder import fast_training_encoder, sdpa_fast_dropout
    from model import load_pretrained_encoder
    fast = fast_training_encoder(load_pretrained_encoder(tiny_bert))
    layer = fast.encoder.layer[0].attention.self
    layer.train()
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 50, 16), torch.randn(2, 2, 50, 16)
    eye = torch.eye(50).expand(2, 2, 50, 50)  # v = identity: the output rows are the attention weights
    weights, _ = sdpa_fast_dropout(layer, q, k, eye.contiguous(), None, dropout=0.2)
    weights = weights.transpose(1, 2)  # back to (batch, heads, q, k)
    assert abs((weights == 0).float().mean().item() - 0.2) < 0.02
    assert abs(weights.sum(-1).mean().item() - 1.0) < 0.02  # rows of softmax, rescaled: 1 on average


# ------------------------------------------------------------------------------------------------- allocator
def test_freed_memory_stays_in_the_process_after_keep_freed_memory():
    """A freed 200 MB tensor: glibc unmaps it by default (RSS falls back); after keep_freed_memory it is kept
    for the next step's allocation of the same size (RSS stays), which is what spares the page faults."""
    import subprocess
    import sys
    from conftest import ROOT
    probe = ("import sys, torch, runtime\n"
             "def rss():\n"
             "    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
             "if sys.argv[1] == 'keep': assert runtime.keep_freed_memory()\n"
             "x = torch.ones(50_000_000)\n"
             "peak = rss()\n"
             "del x\n"
             "print(peak - rss())\n")
    drops = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", probe, mode], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        drops[mode] = float(out.stdout.split()[-1])
    assert drops["default"] > 150, drops  # unmapped at once
    assert drops["keep"] < 20, drops  # kept


# ------------------------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipping every step / never
def test_clipping_folded_into_fused_adamw_gives_the_weights_of_clip_grad_norm(tiny_bert, max_norm):
    import copy
    from engine import build_optimizer, clip_gradients
    from model import BertClassifier, load_pretrained_encoder
    torch.manual_seed(0)
    ours = BertClassifier(load_pretrained_encoder(tiny_bert), 3, "cls", 0.0)
    reference = copy.deepcopy(ours)
    opt_ours = build_optimizer(ours, 1e-2, 1e-2, 0.01, torch.device("cpu"))
    opt_ref = build_optimizer(reference, 1e-2, 1e-2, 0.01, torch.device("cpu"))
    assert opt_ours.defaults.get("fused")  # else this test compares torch's clipping with itself
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ids = torch.randint(1000, 5000, (6, 9))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(4):
        for model, opt in ((ours, opt_ours), (reference, opt_ref)):
            loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), labels)
            loss.backward()
            if model is ours:
                clip_gradients(model, opt, max_norm, scaler)
            else:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert (float(norm) > max_norm) == (max_norm < 1)  # the case the parameter names
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6, msg=name)
    start = BertClassifier(load_pretrained_encoder(tiny_bert), 3, "cls", 0.0)  # trained, so equality means something
    assert (ours.encoder.encoder.layer[0].attention.self.query.weight
            - start.encoder.encoder.layer[0].attention.self.query.weight).abs().max() > 1e-3


def test_self_attention_input_is_cast_once_under_autocast(tiny_bert):
    """query, key and value get the bf16 input cast once by the block's pre-hook (under fp32 they get fp32)."""
    from fast_encoder import fast_training_encoder
    from model import load_pretrained_encoder
    fast = fast_training_encoder(load_pretrained_encoder(tiny_bert))
    seen = []
    for layer in fast.encoder.layer:
        for name in ("query", "key", "value"):
            getattr(layer.attention.self, name).register_forward_hook(
                lambda m, args, out: seen.append(args[0].dtype))
    ids = torch.randint(1000, 5000, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float().sum().backward()
    assert seen == [torch.bfloat16] * 6  # 2 layers x query, key, value
    seen.clear()
    fast(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert seen == [torch.float32] * 6
    assert all(p.grad is not None for n, p in fast.named_parameters() if "query" in n or "key" in n)


def small_encoder(layers: int, attention: str):
    """A random BertModel of `layers` layers with no dropout, so training-mode outputs are deterministic."""
    from transformers import BertConfig, BertModel
    config = BertConfig(vocab_size=6000, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation=attention)
    torch.manual_seed(0)
    return BertModel(config)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "fast"])
@pytest.mark.parametrize("pooling", ["cls", "pooler", "cls_last4"])
def test_last_layer_computes_only_the_first_token_and_gives_the_full_layers_vectors_and_gradients(pooling, attention):
    import copy
    from fast_encoder import fast_training_encoder
    from model import BertClassifier
    encoder = small_encoder(4, "sdpa" if attention == "fast" else attention)
    if attention == "fast":
        encoder = fast_training_encoder(encoder)
    full = copy.deepcopy(encoder)
    model = BertClassifier(encoder, 3, pooling, 0.0)
    ids = torch.randint(1000, 5000, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, 9:] = 0
    assert model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.shape == (3, 1, 32)  # work skipped
    assert full(input_ids=ids, attention_mask=mask).last_hidden_state.shape == (3, 11, 32)

    def full_vector():
        out = full(input_ids=ids, attention_mask=mask, output_hidden_states=pooling == "cls_last4")
        if pooling == "cls_last4":
            return torch.cat([h[:, 0] for h in out.hidden_states[-4:]], dim=-1)
        return out.pooler_output if pooling == "pooler" else out.last_hidden_state[:, 0]
    for train in (False, True):  # evaluation, and training mode (no dropout here) with gradients
        model.train(train)
        full.train(train)
        direction = torch.randn(model.n_features)
        ours, want = model.sentence_vector(ids, mask), full_vector()
        torch.testing.assert_close(ours, want, atol=1e-5, rtol=0)
        (ours @ direction).sum().backward()
        (want @ direction).sum().backward()
        for (name, a), b in zip(model.encoder.named_parameters(), full.parameters()):
            if b.grad is None:
                assert a.grad is None, name
                continue
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
            a.grad, b.grad = None, None
    assert list(model.encoder.state_dict()) == list(full.state_dict())  # checkpoints keep their keys


def test_mean_and_max_pooling_keep_every_token_of_the_last_layer():
    from fast_encoder import first_token_only
    from model import BertClassifier
    for pooling in ("mean", "max"):
        model = BertClassifier(small_encoder(2, "sdpa"), 3, pooling)
        ids = torch.randint(1000, 5000, (2, 7))
        assert model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.shape == (2, 7, 32)
    assert not first_token_only(torch.nn.Linear(2, 2))  # not a BERT-style encoder: left alone


def test_profile_script_runs_train_py_loop_and_prints_the_operator_table(tiny_bert):
    import subprocess
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, "bench/profile_train.py", "--rows", "64", "--steps", "2", "--threads", "1",
                          "--", "--bert_name", tiny_bert, "--max_length", "32", "--precision", "fp32"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "precision fp32, 1 thread(s), 2 batches of 32:" in out.stdout and "samples/s" in out.stdout
    assert "aten::mm" in out.stdout and "Self CPU time total" in out.stdout


def test_predict_bench_reference_computes_predict_pys_calibrated_probabilities(tiny_bert):
    from transformers import AutoModel
    from calibrate import probabilities
    from conftest import load_bench
    from model import BertClassifier
    hf_copy = load_bench("predict_vs_hf").hf_copy
    torch.manual_seed(0)
    model = BertClassifier(AutoModel.from_pretrained(tiny_bert), 3, "pooler").eval()
    ids = torch.randint(1000, 5000, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).numpy()
        for temperature in (1.0, 0.5):  # predict.py writes softmax(logits / T), T from calibration.json
            reference = hf_copy(model, ["a", "b", "c"], temperature)(input_ids=ids, attention_mask=mask).logits
            np.testing.assert_allclose(torch.softmax(reference.double(), -1).numpy(),
                                       probabilities(logits, False, temperature), atol=1e-5)


def test_train_bench_long_documents_keep_each_rows_sentence_first_and_label_and_reach_the_word_count(tmp_path):
    import csv
    from conftest import load_bench
    bench = load_bench("train_vs_hf")
    src, dst = tmp_path / "src.csv", tmp_path / "docs.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentences", "emotion"])
        writer.writerows([[f"sentence {i} says \"{i}\", with quotes", "joy" if i % 2 else "anger"] for i in range(30)])
    bench.long_documents(str(src), str(dst), 7, 60, seed=3)
    with open(dst, encoding="utf-8", newline="") as f:
        docs = list(csv.DictReader(f))
    assert len(docs) == 7
    for i, doc in enumerate(docs):
        assert doc["sentences"].startswith(f"sentence {i} says \"{i}\", with quotes ")  # its own sentence first
        assert doc["emotion"] == ("joy" if i % 2 else "anger")
        assert 60 <= len(doc["sentences"].split()) < 60 + 6  # stops at the first sentence that reaches the count
    bench.long_documents(str(src), str(tmp_path / "again.csv"), 7, 60, seed=3)
    assert (tmp_path / "again.csv").read_text(encoding="utf-8") == dst.read_text(encoding="utf-8")  # seeded


def test_train_bench_ours_bn_trains_batch_n_with_both_learning_rates_scaled_by_n_over_32(tmp_path):
    from conftest import load_bench
    bench = load_bench("train_vs_hf")
    args = bench.parse_args(["--workdir", str(tmp_path), "--head_lr", "0.002"])

    def flags(variant):
        argv = bench.ours_argv(args, variant, str(tmp_path / "model"))
        return {flag: float(argv[argv.index(flag) + 1]) for flag in ("--batch_size", "--lr_main", "--lr")}
    assert flags("ours") == {"--batch_size": 32, "--lr_main": pytest.approx(5e-5), "--lr": pytest.approx(2e-3)}
    assert flags("ours_b64") == {"--batch_size": 64, "--lr_main": pytest.approx(1e-4), "--lr": pytest.approx(4e-3)}
    assert flags("ours_b16") == {"--batch_size": 16, "--lr_main": pytest.approx(2.5e-5), "--lr": pytest.approx(1e-3)}
    assert bench.ours_argv(args, "ours_fp32", "m")[-2:] == ["--precision", "fp32"]
    assert bench.contenders(bench.parse_args(["--only", "ours,ours_b64,trainer", "--windows", "4"])) == [
        "ours", "ours_b64", "trainer", "ours_w4"]
    with pytest.raises(SystemExit, match="--only: no contender ours_bx, foo "):
        bench.contenders(bench.parse_args(["--only", "ours,ours_bx,foo"]))


def test_levers_bench_bf16_weights_keeps_float32_masters_and_writes_them_back_rounded(tiny_bert):
    import subprocess
    import sys
    from conftest import ROOT, load_bench
    from model import BertClassifier, load_pretrained_encoder
    torch.manual_seed(0)
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3)
    params = [p for p in model.parameters() if p.requires_grad]
    step, master = load_bench("levers").bf16_weights(model, params)
    dense = model.encoder.encoder.layer[0].intermediate.dense
    assert dense.weight.dtype == torch.bfloat16 and model.classifier.weight.dtype == torch.float32
    before = dense.weight.detach().float().clone()
    ids = torch.randint(1000, 5000, (4, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits.float().sum().backward()
    step()
    assert all(m.dtype == torch.float32 for m in master)
    assert not torch.equal(dense.weight.float(), before)  # it trained
    assert any(torch.equal(dense.weight, m.to(torch.bfloat16)) for m in master)  # bf16 copy of its master
    out = subprocess.run([sys.executable, "bench/levers.py", "--lever", "bf16_weights", "--batches", "2", "--rounds",
                          "1", "--bert_name", tiny_bert, "--max_length", "32"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "round 1: train.py " in out.stdout and "bf16_weights / train.py" in out.stdout


@pytest.mark.parametrize("outcome, code", [("0", 0), ("3", 3), ("bad", 2)])
def test_a_whole_process_run_skips_the_last_garbage_collection_and_exits_as_before(tmp_path, outcome, code):
    """Entry points run as scripts freeze the garbage collector before exiting (its last pass over torch and
    transformers took about 1.2 s a run): main's exit code, flushed streams and atexit handlers (a profiler's dump, a
    wrapper's report) are as before."""
    import subprocess
    import sys
    from conftest import ROOT
    script = tmp_path / "entry.py"
    script.write_text(f"""import atexit, gc, sys
sys.path.insert(0, {ROOT!r})
from config import InputError, run_cli
atexit.register(lambda: print(" | frozen at exit:", gc.get_freeze_count() > 0, end=""))
def main():
    print("a line", end="")  # a pipe buffers it until the exit flushes it
    sys.stderr.write("a note")
    if sys.argv[1] == "bad":
        raise InputError("what is wrong, and where")
    return int(sys.argv[1])
run_cli(main, whole_process=True)
""")
    done = subprocess.run([sys.executable, str(script), outcome], capture_output=True, text=True, timeout=60)
    assert done.returncode == code
    assert done.stdout == "a line | frozen at exit: True"
    assert done.stderr.startswith("a note") and ("error: what is wrong, and where" in done.stderr) == (code == 2)
