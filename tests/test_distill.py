"""--teacher: the blended targets, the losses they make, the teacher's probabilities, and the refusals."""
import json
import os

import pytest
import torch

from conftest import NAMES, call, make_rows, train_tiny, write_classes, write_csv


def test_blended_targets_are_the_weighted_mean_of_the_labels_and_the_teachers_probabilities():
    from dataset import blend_targets
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    single = blend_targets(torch.tensor([0, 1]), soft, 0.25, 3)
    assert torch.allclose(single, torch.tensor([[0.925, 0.05, 0.025], [0.025, 0.775, 0.2]]))
    assert torch.allclose(single.sum(1), torch.ones(2))  # still a distribution over the classes
    multi = blend_targets(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), soft, 0.5, 3)
    assert torch.allclose(multi, torch.tensor([[0.85, 0.1, 0.55], [0.05, 0.05, 0.4]]))
    assert torch.equal(blend_targets(torch.tensor([2, 0]), soft, 0.0, 3), torch.tensor([[0., 0, 1], [1, 0, 0]]))


@pytest.mark.parametrize("multi_label", [False, True])
def test_the_blended_target_gives_the_blend_of_the_two_losses(multi_label):
    """Cross-entropy and BCE are linear in the target: training on the blend is (1 - w) x the labels' loss +
    w x the teacher's, with class weights too."""
    from dataset import blend_targets
    torch.manual_seed(0)
    logits, w = torch.randn(6, 4), 0.3
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    if multi_label:
        labels, soft = (torch.rand(6, 4) < 0.4).float(), torch.rand(6, 4)
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    else:
        labels, soft = torch.randint(0, 4, (6,)), torch.softmax(torch.randn(6, 4), 1)
        loss = torch.nn.CrossEntropyLoss(weight=None)  # a weighted mean of soft targets has no such identity
    blended = loss(logits, blend_targets(labels, soft, w, 4))
    expected = (1 - w) * loss(logits, labels.float() if multi_label else labels) + w * loss(logits, soft)
    assert blended.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rows_carrying_the_teachers_probabilities_get_blended_targets_and_the_others_their_labels():
    from dataset import Collator, EncodedDataset
    train = EncodedDataset([[101, 5, 102], [101, 6, 7, 102]], [0, 2])
    train.teacher_probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    collate = Collator(0, 3, False, None, 0.5)
    batch = collate([train[0], train[1]])
    assert torch.allclose(batch["labels"], torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.1, 0.8]]))
    valid = EncodedDataset([[101, 5, 102]], [1])  # validation rows carry none: the row's own label
    assert torch.equal(collate([valid[0]])["labels"], torch.tensor([1]))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert):
    """A tiny single-label model (the teacher) and its folder's classes.json."""
    folder = tmp_path_factory.mktemp("teacher")
    save, classes, _ = train_tiny(folder, tiny_bert, 60, 1, "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3")
    return save, classes, folder


def student_args(folder, tiny_bert, classes, *flags):
    data = write_csv(folder / "student_train.csv", make_rows(45, seed=4))
    return ["-d", classes, "-p", "False", "--train_path", data, "--bert_name", tiny_bert, "--save_path",
            str(folder / "student"), "--n_epochs", "1", "--max_length", "32", "--batch_size", "8", *flags]


def test_a_student_learns_from_the_teachers_calibrated_probabilities_of_its_training_rows(teacher, tiny_bert,
                                                                                          tmp_path, monkeypatch):
    import distill
    import predict
    import train
    save, classes, _ = teacher
    seen = {}
    original = distill.teacher_targets

    def spy(cfg, data, run):
        seen["probs"], seen["texts"] = original(cfg, data, run), list(data.texts)
        return seen["probs"]
    monkeypatch.setattr(train, "teacher_targets", spy)
    code, out, err = call(train.main, student_args(tmp_path, tiny_bert, classes, "--teacher", save,
                                                   "--teacher_weight", "0.7"))
    assert code == 0, err
    assert f"teacher {save}: predicting the {len(seen['texts'])} training rows" in out
    expected = predict.load_classifier(save).predict(seen["texts"]).probabilities
    assert torch.allclose(seen["probs"], torch.from_numpy(expected), atol=1e-6)
    with open(os.path.join(tmp_path, "student", "train_config.json"), encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["teacher"] == save and recorded["teacher_weight"] == 0.7


@pytest.mark.parametrize("flags, message", [
    (["--teacher", "TEACHER", "--teacher_weight", "1.5"], "--teacher_weight must be in [0, 1]"),
    (["--teacher_weight", "0.3"], "--teacher_weight is the share of --teacher's probabilities: add --teacher"),
    (["--teacher", "TEACHER", "--loss", "focal"], "it does not combine with --loss focal"),
    (["--teacher", "TEACHER", "--multi_label", "True"], "a single-label model; this run is multi-label"),
    (["--teacher", "TEACHER", "-d", "OTHER"], "are not those of -d"),
    (["--teacher", "MISSING"], "not a model or ensemble folder of train.py"),
    (["--teacher", "TEACHER", "--save_path", "TEACHER"], "which this run overwrites"),
])
def test_a_teacher_that_does_not_fit_is_refused_in_one_line_before_the_model_loads(teacher, tiny_bert, tmp_path,
                                                                                  flags, message):
    import train
    save, classes, _ = teacher
    names = {"TEACHER": save, "MISSING": str(tmp_path / "no_such_model"),
             "OTHER": write_classes(tmp_path / "other.json", list(reversed(NAMES)))}
    code, out, err = call(train.main, student_args(tmp_path, tiny_bert, classes, *[names.get(f, f) for f in flags]))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "predicting the" not in out and "pooling auto" not in out  # refused before anything heavy


def test_loading_predict_py_into_train_py_keeps_the_thread_choice_and_its_reason(tmp_path):
    """--teacher imports predict.py into a train.py process; its cpu_threads.configure() must not replace the first
    choice (which set OMP_NUM_THREADS itself) by one that reads 'OMP_NUM_THREADS'."""
    import subprocess
    import sys
    from conftest import ROOT
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", "import cpu_threads; first = dict(cpu_threads.configure()); "
                           "import predict; print(first == cpu_threads.CHOICE, cpu_threads.CHOICE['threads'])"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("True") and "OMP_NUM_THREADS" not in done.stdout, done.stdout + done.stderr


def test_recipes_bench_distils_the_ensemble_of_its_baselines(teacher, tmp_path):
    """bench/recipes.py's `distill`: the teacher is an ensemble of copies of the sweep's baselines (made once), and
    the student's command names it."""
    import shutil

    import predict
    from conftest import load_bench
    from ensemble import is_ensemble
    recipes = load_bench("recipes")
    save, _, _ = teacher
    for seed in (42, 43):
        shutil.copytree(save, tmp_path / "baseline" / f"seed_{seed}")
    folder = recipes.baselines_ensemble(str(tmp_path), [42, 43])
    assert is_ensemble(folder) and recipes.baselines_ensemble(str(tmp_path), [42, 43]) == folder
    probs = predict.load_classifier(folder).predict(["i feel happy today"]).probabilities
    alone = predict.load_classifier(save).predict(["i feel happy today"]).probabilities
    assert torch.allclose(torch.from_numpy(probs), torch.from_numpy(alone), atol=1e-6)  # two copies: the same
    options = recipes.recipe_options("distill", {"teacher": folder})
    assert options == {"--teacher": folder, "--teacher_weight": "0.5"}
