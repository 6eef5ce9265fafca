"""Issue 17's recipes, each checked against what it says it does: the learning rate of every layer (--llrd), which
weights --reinit_layers redraws, the EMA update (--ema), and the loss formulas (--loss focal|asl,
--label_smoothing) against values computed by hand; then each option through train.py, and its bad values."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import call, make_rows, train_tiny, write_classes, write_csv


def tiny_classifier(tiny_bert, n_classes=3, pooling="cls"):
    from model import BertClassifier, load_pretrained_encoder
    return BertClassifier(load_pretrained_encoder(tiny_bert), n_classes, pooling)


def lr_of(optimizer) -> dict:
    """id(parameter) -> its learning rate and weight decay."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


# ------------------------------------------------------------------------------------------------------- llrd
def test_llrd_gives_each_layer_its_learning_rate(tiny_bert):
    import engine
    model = tiny_classifier(tiny_bert)
    rates = lr_of(engine.build_optimizer(model, 1e-3, 5e-3, 0.01, torch.device("cpu"), llrd=0.5))
    for name, p in model.named_parameters():
        lr, decay = rates[id(p)]
        if name.startswith("classifier."):
            want = 5e-3
        elif ".layer.1." in name or name.startswith("encoder.pooler."):
            want = 1e-3  # the top layer (of 2), and the pooler above it
        elif ".layer.0." in name:
            want = 5e-4
        else:
            assert "embeddings" in name, name
            want = 2.5e-4
        assert math.isclose(lr, want, rel_tol=1e-12), name
        assert decay == (0.0 if p.ndim < 2 or "LayerNorm" in name else 0.01), name


def test_llrd_off_keeps_the_four_groups_it_always_had(tiny_bert):
    import engine
    optimizer = engine.build_optimizer(tiny_classifier(tiny_bert), 1e-3, 5e-3, 0.01, torch.device("cpu"))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (1e-3, 0.0), (1e-3, 0.01), (5e-3, 0.0), (5e-3, 0.01)]


def test_layer_depths_across_families():
    from engine import layer_depths
    gpt2 = layer_depths(["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.bias",
                         "h.2.ln_1.weight", "ln_f.weight", "classifier.weight"])
    assert gpt2 == {"wte.weight": 3, "wpe.weight": 3, "h.0.attn.c_attn.weight": 2, "h.1.mlp.c_fc.bias": 1,
                    "h.2.ln_1.weight": 0, "ln_f.weight": 0, "classifier.weight": 0}
    llama = layer_depths(["encoder.embed_tokens.weight", "encoder.layers.0.self_attn.q_proj.weight",
                          "encoder.layers.11.mlp.up_proj.weight", "encoder.norm.weight"])
    assert llama == {"encoder.embed_tokens.weight": 12, "encoder.layers.0.self_attn.q_proj.weight": 11,
                     "encoder.layers.11.mlp.up_proj.weight": 0, "encoder.norm.weight": 0}


# -------------------------------------------------------------------------------------------- reinit_layers
def test_reinit_layers_redraws_the_top_layers_only(tiny_bert):
    from model import load_pretrained_encoder, reinit_top_layers
    pretrained = load_pretrained_encoder(tiny_bert).state_dict()
    torch.manual_seed(1)
    encoder = load_pretrained_encoder(tiny_bert)
    reinit_top_layers(encoder, 1, pooler=True)
    std = encoder.config.initializer_range
    for name, tensor in encoder.state_dict().items():
        if ".layer.1." in name or name.startswith("pooler."):
            if name.endswith("LayerNorm.weight"):
                assert torch.equal(tensor, torch.ones_like(tensor))
            elif name.endswith("bias"):
                assert torch.equal(tensor, torch.zeros_like(tensor))
            else:  # a Linear's weight drawn anew from N(0, initializer_range)
                assert not torch.equal(tensor, pretrained[name]), name
                assert abs(tensor.std().item() - std) < 0.25 * std and abs(tensor.mean().item()) < 0.25 * std
        else:
            assert torch.equal(tensor, pretrained[name]), name
    torch.manual_seed(1)
    again = load_pretrained_encoder(tiny_bert)
    reinit_top_layers(again, 1, pooler=True)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), encoder.state_dict().values()))


def test_reinit_layers_without_the_pooler_keeps_it_and_refuses_too_many(tiny_bert):
    from config import InputError
    from model import load_pretrained_encoder, reinit_top_layers
    pretrained = load_pretrained_encoder(tiny_bert).state_dict()
    encoder = load_pretrained_encoder(tiny_bert)
    reinit_top_layers(encoder, 2, pooler=False)
    assert torch.equal(encoder.state_dict()["pooler.dense.weight"], pretrained["pooler.dense.weight"])
    assert not torch.equal(encoder.state_dict()["encoder.layer.0.attention.self.query.weight"],
                           pretrained["encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(InputError, match="has 2 layers"):
        reinit_top_layers(encoder, 3, pooler=False)


# -------------------------------------------------------------------------------------------------------- ema
def test_ema_update_and_swap_by_hand():
    from engine import WeightAverage
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    frozen = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    model = torch.nn.Module()
    model.weight, model.frozen = weight, frozen
    average = WeightAverage(model, decay=0.9)
    assert len(average.shadow) == 1  # trainable weights only
    with torch.no_grad():
        weight.copy_(torch.tensor([3.0, 6.0]))
    average.update()  # decay min(0.9, 2/11): the first updates move the average fast
    d1 = 2 / 11
    want = torch.tensor([d1 * 1 + (1 - d1) * 3, d1 * 2 + (1 - d1) * 6])
    assert torch.allclose(average.shadow[0], want, atol=1e-7)
    for _ in range(98):
        average.update()
    assert average.current_decay() == 0.9  # min(0.9, 100/109)
    with torch.no_grad():
        weight.copy_(torch.tensor([0.0, 0.0]))
    before = average.shadow[0].clone()
    average.update()
    assert torch.allclose(average.shadow[0], 0.9 * before, atol=1e-7)
    with average.applied():
        assert torch.equal(weight.detach(), 0.9 * before)
    assert torch.equal(weight.detach(), torch.zeros(2))  # the trained weights come back
    restored = WeightAverage(model, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 100 and torch.equal(restored.shadow[0], average.shadow[0])


# ----------------------------------------------------------------------------------------------------- losses
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
TARGET = torch.tensor([0, 2])


def softmax_by_hand(row):
    e = [math.exp(z) for z in row]
    return [v / sum(e) for v in e]


def test_focal_single_label_against_hand_computed_values():
    from losses import FocalLoss
    want = []
    for row, t in zip(LOGITS.tolist(), TARGET.tolist()):
        p = softmax_by_hand(row)[t]
        want.append(-((1 - p) ** 2) * math.log(p))
    assert math.isclose(FocalLoss(2.0, False)(LOGITS, TARGET).item(), sum(want) / 2, rel_tol=1e-6)
    weight = torch.tensor([1.0, 1.0, 3.0])
    weighted = (1 * want[0] + 3 * want[1]) / 4  # a weighted mean over rows, as CrossEntropyLoss's
    assert math.isclose(FocalLoss(2.0, False, weight)(LOGITS, TARGET).item(), weighted, rel_tol=1e-6)
    assert torch.allclose(FocalLoss(0.0, False, weight)(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET, weight))


def test_focal_and_asl_multi_label_against_hand_computed_values():
    from losses import AsymmetricLoss, FocalLoss
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    focal, asl = [], []
    for row, targets in zip(LOGITS.tolist(), y.tolist()):
        for z, t in zip(row, targets):
            p = sig(z)
            p_true = p if t else 1 - p
            focal.append(-((1 - p_true) ** 2) * math.log(p_true))
            p_m = max(p - 0.05, 0.0)
            asl.append(-math.log(p) if t else -(p_m ** 4) * math.log(1 - p_m))
    assert math.isclose(FocalLoss(2.0, True)(LOGITS, y).item(), sum(focal) / 6, rel_tol=1e-6)
    assert math.isclose(AsymmetricLoss(4.0, 0.0, 0.05)(LOGITS, y).item(), sum(asl) / 6, rel_tol=1e-6)
    bce = F.binary_cross_entropy_with_logits(LOGITS, y)
    assert torch.allclose(AsymmetricLoss(0.0, 0.0, 0.0)(LOGITS, y), bce)
    assert torch.allclose(FocalLoss(0.0, True)(LOGITS, y), bce)
    pos_weight = torch.tensor([2.0, 1.0, 1.0])
    assert torch.allclose(AsymmetricLoss(0.0, 0.0, 0.0, pos_weight)(LOGITS, y),
                          F.binary_cross_entropy_with_logits(LOGITS, y, pos_weight=pos_weight))


def test_label_smoothing_against_its_formula():
    from config import Config
    from losses import make_loss
    loss = make_loss(Config(label_smoothing=0.1), [1, 1, 1], 3, torch.device("cpu"))
    want = 0
    for row, t in zip(LOGITS.tolist(), TARGET.tolist()):
        log_p = [math.log(v) for v in softmax_by_hand(row)]
        want += -sum((0.9 * (c == t) + 0.1 / 3) * lp for c, lp in enumerate(log_p)) / 2
    assert math.isclose(loss(LOGITS, TARGET).item(), want, rel_tol=1e-6)


def test_make_loss_picks_the_loss_of_each_kind_of_task():
    from config import Config
    from losses import AsymmetricLoss, FocalLoss, make_loss
    cpu = torch.device("cpu")
    picks = {(name, multi): type(make_loss(Config(loss=name), [1, 2], 3, cpu, multi))
             for name in ("auto", "ce", "bce", "focal", "asl") for multi in (False, True)}
    assert picks == {("auto", False): torch.nn.CrossEntropyLoss, ("auto", True): torch.nn.BCEWithLogitsLoss,
                     ("ce", False): torch.nn.CrossEntropyLoss, ("ce", True): torch.nn.BCEWithLogitsLoss,
                     ("bce", False): torch.nn.CrossEntropyLoss, ("bce", True): torch.nn.BCEWithLogitsLoss,
                     ("focal", False): FocalLoss, ("focal", True): FocalLoss,
                     ("asl", False): torch.nn.CrossEntropyLoss, ("asl", True): AsymmetricLoss}


# -------------------------------------------------------------------------------------------- through train.py
def saved_weights(save) -> dict:
    from safetensors.torch import load_file
    return load_file(os.path.join(save, "model.safetensors"))


def test_every_recipe_trains_and_saves_the_averaged_weights(tmp_path, tiny_bert):
    """--ema: what is saved is the average (the resumable state keeps both), with llrd, reinit and focal on."""
    from resume import STATE_FILE, resume_root, step_folders
    save, _, out = train_tiny(tmp_path, tiny_bert, 60, 1, "--ema", "0.9", "--llrd", "0.8", "--reinit_layers", "1",
                              "--loss", "focal", "--save_every", "1000", "--batch_size", "8", "--lr_main", "1e-3")
    state = torch.load(os.path.join(step_folders(resume_root(save))[-1], STATE_FILE), weights_only=True)
    model = state["model"]
    # the trained parameters in the model's order (the word embeddings and the unused pooler stay frozen)
    trainable = [n for n, _ in tiny_classifier(tiny_bert).named_parameters()
                 if "word_embeddings" not in n and "pooler" not in n]
    saved = saved_weights(save)
    assert state["average"]["updates"] == state["progress"]["updates"] > 0
    assert len(state["average"]["shadow"]) == len(trainable)
    for name, average in zip(trainable, state["average"]["shadow"]):
        assert torch.equal(saved[name], average), name
    assert any(not torch.equal(saved[k], model[k]) for k in trainable)  # the average is not the trained weights


def test_ema_resumed_after_a_stop_ends_bitwise_equal(tmp_path, tiny_bert, monkeypatch):
    import signal

    import train
    from test_resume import signal_after
    classes = write_classes(tmp_path / "classes.json")
    data = write_csv(tmp_path / "train.csv", make_rows(60))
    base = ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--n_epochs", "2", "--batch_size", "8",
            "--max_length", "32", "--ema", "0.8", "--llrd", "0.7", "--precision", "fp32", "--log_every", "1000"]
    assert call(train.main, [*base, "--save_path", str(tmp_path / "ref")])[0] == 0
    with monkeypatch.context() as patch:
        signal_after(patch, 4, signal.SIGUSR1)
        assert call(train.main, [*base, "--save_path", str(tmp_path / "cut"), "--resume", "auto"])[0] == 75
    code, out, err = call(train.main, [*base, "--save_path", str(tmp_path / "cut"), "--resume", "auto"])
    assert code == 0, err
    want, got = saved_weights(tmp_path / "ref"), saved_weights(tmp_path / "cut")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_multi_label_asl_and_single_label_smoothing_train(tmp_path, tiny_bert):
    rows = [(text, label if i % 4 else f"{label},joy") for i, (text, label) in enumerate(make_rows(60))]
    (tmp_path / "ml").mkdir()
    classes = write_classes(tmp_path / "ml" / "classes.json")
    data = write_csv(tmp_path / "ml" / "train.csv", rows)
    import train
    code, out, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--max_length",
                                       "32", "--n_epochs", "1", "--multi_label", "True", "--loss", "asl",
                                       "--save_path", str(tmp_path / "ml" / "model")])
    assert code == 0, err
    (tmp_path / "sl").mkdir()
    save, _, out = train_tiny(tmp_path / "sl", tiny_bert, 60, 1, "--label_smoothing", "0.1")
    assert "done: best epoch 1" in out


@pytest.mark.parametrize("flags, message", [
    (["--loss", "asl"], "--loss asl is for multi-label tasks"),
    (["--loss", "bce"], "--loss bce is for multi-label tasks"),
    (["--loss", "ce", "--multi_label", "True"], "--loss ce is for single-label tasks"),
    (["--focal_gamma", "-1"], "--focal_gamma and --asl_gamma_neg must be 0 or more"),
    (["--asl_clip", "1"], "--asl_clip must be in [0, 1)"),
    (["--label_smoothing", "1"], "--label_smoothing must be in [0, 1)"),
    (["--label_smoothing", "0.1", "--multi_label", "True"], "--label_smoothing is for single-label"),
    (["--label_smoothing", "0.1", "--loss", "focal"], "does not combine with --loss focal"),
    (["--llrd", "0"], "--llrd must be in (0, 1]"),
    (["--llrd", "1.5"], "--llrd must be in (0, 1]"),
    (["--reinit_layers", "-1"], "--reinit_layers must be 0 or more"),
    (["--reinit_layers", "1", "--bert_finetuning", "False"], "--reinit_layers needs --bert_finetuning True"),
    (["--reinit_layers", "3"], "--reinit_layers 3: the encoder has 2 layers"),
    (["--ema", "1"], "--ema must be in [0, 1)"),
    (["--loss", "mse"], "invalid choice: 'mse'"),
])
def test_bad_recipe_options_are_one_line_exit_2_nothing_written(tiny_task, flags, message):
    import train
    code, out, err = call(train.main, [*tiny_task["args"], *flags])
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(os.path.join(tiny_task["save"], "model.safetensors"))


def test_recipes_bench_summary_pairs_each_recipe_with_the_baseline_seed_by_seed():
    from conftest import load_bench
    recipes = load_bench("recipes")
    scores = {"baseline": [0.40, 0.42, 0.44], "focal": [0.42, 0.45, 0.48]}  # gains 0.02, 0.03, 0.04
    results = {name: {s: {"macro_f1_cross_fitted": v, "macro_f1": v + 0.01, "macro_f1_at_0.5": v, "wall_s": 10.0}
                      for s, v in zip((1, 2, 3), values)} for name, values in scores.items()}
    baseline, focal = recipes.summary_rows(results, [1, 2, 3])
    assert baseline[:2] == ["baseline", "0.4200 ± 0.0200"] and baseline[3:5] == ["-", "-"]
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert focal[3] == f"+0.0300 [{0.03 - half:+.4f}, {0.03 + half:+.4f}]"
    assert focal[4].startswith("recipe beats baseline") and focal[5] == "10"
    one = recipes.summary_rows({k: {1: v[1]} for k, v in results.items()}, [1])
    assert one[1][3:5] == ["+0.0200", "one seed: no interval"]


MINI_NAMES = {"original": ["joy", "anger", "grief"], "ekman": ["joy", "anger", "sadness"], "group": ["pos", "neg"]}
MINI_IDS = {"original": ["2", "0", "1", "1,2"], "ekman": ["0", "2", "1", "0,2"], "group": ["0", "1", "1", "0,1"]}
MINI_TEXTS = ["so happy", "so angry", "so sad", "happy and angry"]


def write_mini_tsv(path, ids: list, repeat: int) -> None:
    """`repeat` copies of MINI_TEXTS (numbered) labelled `ids`, in GoEmotions' TSV form."""
    rows = [f"{t} {k}\t{i}\tid{k}" for k in range(repeat) for t, i in zip(MINI_TEXTS, ids)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def mini_goemotions(tmp_path, monkeypatch):
    """A miniature ../shared/data/goemotions (24 train and 8 dev rows, each taxonomy labelling them differently)
    that bench/accuracy.py reads; returns that module."""
    from conftest import load_bench
    accuracy = load_bench("accuracy")
    for taxonomy in accuracy.TAXONOMIES:
        folder = tmp_path / "goemotions" / taxonomy
        folder.mkdir(parents=True)
        (folder / "labels.txt").write_text("\n".join(MINI_NAMES[taxonomy]) + "\n", encoding="utf-8")
        for split, repeat in (("train", 6), ("dev", 2)):
            write_mini_tsv(folder / f"{split}.tsv", MINI_IDS[taxonomy], repeat)
    monkeypatch.setattr(accuracy, "GOEMOTIONS", str(tmp_path / "goemotions"))
    return accuracy


def test_convert_taxonomy_adds_the_other_taxonomies_labels_of_the_same_rows(tmp_path, monkeypatch):
    """convert_taxonomy's *_all files (only when asked for) carry the other taxonomies' labels of the very same rows,
    in a sample too; rows out of step are refused, not joined wrongly."""
    import csv
    import json
    accuracy = mini_goemotions(tmp_path, monkeypatch)
    assert "train_all" not in accuracy.convert_taxonomy("group", str(tmp_path / "plain"), train_rows=10)
    paths = accuracy.convert_taxonomy("group", str(tmp_path / "data"), train_rows=10, with_other_taxonomies=True)
    assert paths["other_taxonomies"] == ["original", "ekman"]
    with open(paths["train"], newline="") as f:
        plain = list(csv.DictReader(f))
    with open(paths["train_all"], newline="") as f:
        every = list(csv.DictReader(f))
    assert len(plain) == len(every) == 10
    assert [(r["sentences"], r["emotion"]) for r in every] == [(r["sentences"], r["emotion"]) for r in plain]
    by_text = {f"{t} {k}": i for k in range(6) for i, t in enumerate(MINI_TEXTS)}
    for row in every:  # each row's other labels are its own in the other taxonomies
        i = by_text[row["sentences"]]
        assert (row["original"], row["ekman"], row["emotion"]) == (MINI_IDS["original"][i], MINI_IDS["ekman"][i],
                                                                    MINI_IDS["group"][i])
    for taxonomy, path in (("group", paths["classes"]), ("ekman", paths["classes_ekman"])):
        with open(path) as f:
            assert json.load(f) == {name: i for i, name in enumerate(MINI_NAMES[taxonomy])}
    shifted = tmp_path / "shifted.tsv"
    lines = (tmp_path / "goemotions" / "ekman" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    shifted.write_text("\n".join(lines[1:] + lines[:1]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="its rows are not those of"):
        accuracy.convert_split(str(tmp_path / "goemotions" / "group" / "dev.tsv"), str(tmp_path / "x.csv"),
                               other_label_tsvs={"ekman": str(shifted)})


def test_fine_map_groups_the_original_classes_and_refuses_labels_that_are_no_grouping(tmp_path, monkeypatch):
    """fine_map: each original class belongs to the coarse class every row it labels has; a taxonomy whose labels
    are not the image of the original ones is refused with the class or row at fault, and --write_fine_map then
    leaves an earlier map as it was; on GoEmotions itself every one of the 28 classes belongs to one class."""
    import json
    accuracy = mini_goemotions(tmp_path, monkeypatch)
    group_tsv = tmp_path / "goemotions" / "group" / "train.tsv"

    def write_group_labels(ids):  # original rows: grief / joy / anger / anger+grief; group names ["pos", "neg"]
        write_mini_tsv(group_tsv, ids, 6)
    write_group_labels(["1", "0", "1", "1"])
    assert accuracy.fine_map("group") == {"pos": ["joy"], "neg": ["anger", "grief"]}
    map_json = tmp_path / "map.json"
    assert accuracy.main(["--write_fine_map", "group", str(map_json)]) == 0
    assert json.loads(map_json.read_text()) == {"pos": ["joy"], "neg": ["anger", "grief"]}
    # the miniature Ekman: anger's rows are labelled anger, then joy and sadness
    with pytest.raises(SystemExit, match="ekman: its labels are not a grouping of the original ones: no class of it "
                                         "is in every row anger labels$"):
        accuracy.fine_map("ekman")
    write_group_labels(["1", "0", "1", "0,1"])  # the last row has pos too, which none of its classes gives
    with pytest.raises(SystemExit, match=r"group/train.tsv, row 4: labelled neg, pos, but its original labels "
                                         r"\(anger, grief\) belong to neg$"):
        accuracy.main(["--write_fine_map", "group", str(map_json)])
    assert json.loads(map_json.read_text()) == {"pos": ["joy"], "neg": ["anger", "grief"]}  # left as it was
    write_group_labels(["1", "0", "1"])  # a row fewer: not the same comments
    with pytest.raises(SystemExit, match="its rows are not those of original/train.tsv"):
        accuracy.fine_map("group")
    with pytest.raises(SystemExit, match="--write_fine_map original: the taxonomies grouping the original one"):
        accuracy.main(["--write_fine_map", "original", str(map_json)])
    monkeypatch.setattr(accuracy, "GOEMOTIONS", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                             "goemotions"))
    if not os.path.isdir(accuracy.GOEMOTIONS):
        pytest.skip(f"{accuracy.GOEMOTIONS}: GoEmotions is not here")
    originals = sorted(accuracy.read_names(os.path.join(accuracy.GOEMOTIONS, "original")))
    groupings = {taxonomy: accuracy.fine_map(taxonomy) for taxonomy in ("ekman", "group")}
    for taxonomy, size in (("ekman", 7), ("group", 4)):
        assert len(groupings[taxonomy]) == size
        assert sorted(f for members in groupings[taxonomy].values() for f in members) == originals
    assert "grief" in groupings["group"]["negative"]
    assert groupings["ekman"]["surprise"] == ["confusion", "curiosity", "realization", "surprise"]


def test_all_taxonomies_recipe_trains_a_head_per_taxonomy_and_reads_each_ones_report(tmp_path, monkeypatch,
                                                                                      tiny_bert):
    """The recipe's command gives each flag once (its data and label maps replace the sweep's) and makes train.py
    train a head per taxonomy; each head's scores are read from its own report."""
    import json
    import train
    from conftest import load_bench
    accuracy, recipes = mini_goemotions(tmp_path, monkeypatch), load_bench("recipes")
    paths = accuracy.convert_taxonomy("group", str(tmp_path / "data"), train_rows=10, with_other_taxonomies=True)
    save = str(tmp_path / "model")
    args = recipes.parse_args(["--n_epochs", "1", "--", "--bert_name", tiny_bert, "--batch_size", "4",
                               "--max_length", "16"])
    command = recipes.train_command(args, paths, "all_taxonomies", 42, save)
    flags = [x for x in command[2:] if x.startswith("-")]
    assert len(flags) == len(set(flags))
    given = dict(zip(command[2::2], command[3::2]))
    assert given["--train_path"] == paths["train_all"] and given["--valid_path"] == paths["dev_all"]
    assert given["-d"] == ",".join([paths["classes"], paths["classes_original"], paths["classes_ekman"]])
    assert train.main(command[2:]) == 0
    with open(os.path.join(save, "train_config.json")) as f:
        assert json.load(f)["label_col"] == "emotion,original,ekman"
    assert not os.path.exists(os.path.join(save, "report", "metrics.json"))
    for task in ("emotion", "original", "ekman"):
        with open(os.path.join(save, "report", task, "metrics.json")) as f:
            written = json.load(f)
        assert recipes.report_scores(save, task) == {k: written[k] for k in recipes.SCORES}
    with pytest.raises(SystemExit, match="no recipe nope"):
        recipes.main(["--only", "nope", "--work_dir", str(tmp_path / "w")])
