"""The ladder of distilled starter rerankers (models/starter-reranker-L2, -L4): folder contracts,
int8 export and ranking on real Semanlink test tags, and the distillation pieces that run without
training (layer selection and initialisation from the teacher, the loss, the teacher-score cache)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossrank.evaluation.datasets import semanlink_queries
from test_starter import KNOWN_DOCUMENT, KNOWN_QUERY, STARTER, _relevant_and_others, relevant_vs_random_auc

MODELS = STARTER.parent
STUDENTS = {2: MODELS / "starter-reranker-L2", 4: MODELS / "starter-reranker-L4"}
MODELS_LIMIT_KIB = 120 * 1024  # all repository weights together (issue 14)


# -- the shipped students --------------------------------------------------------------------


@pytest.mark.parametrize("layers", sorted(STUDENTS))
def test_student_folder_is_a_standard_small_hf_model(layers):
    folder = STUDENTS[layers]
    config = json.loads((folder / "config.json").read_text())
    teacher = json.loads((STARTER / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["num_hidden_layers"] == layers
    for same in ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size", "max_position_embeddings"):
        assert config[same] == teacher[same], same
    assert len(config["id2label"]) == 1 and config["dtype"] == "float16"
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json", "README.md", "training_log.json"):
        assert (folder / name).is_file(), name
    assert (folder / "tokenizer.json").read_bytes() == (STARTER / "tokenizer.json").read_bytes()
    # fp16: 2 bytes per parameter, the full vocabulary, `layers` of the teacher's 6 encoder layers
    log = json.loads((folder / "training_log.json").read_text())
    weights = (folder / "model.safetensors").stat().st_size
    assert 2 * log["parameters"] <= weights <= 2 * log["parameters"] + 64 * 1024
    teacher_weights = (STARTER / "model.safetensors").stat().st_size
    per_layer = (teacher_weights - weights) / (6 - layers)  # what one encoder layer costs in fp16
    assert per_layer == pytest.approx(2 * 1_774_464, rel=0.01)


def test_all_repository_weights_stay_under_120_mib():
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total <= MODELS_LIMIT_KIB * 1024, f"models/ holds {total / 2**20:.1f} MiB (limit 120)"


@pytest.mark.parametrize("layers", sorted(STUDENTS))
def test_student_card_states_recipe_licences_and_choices(layers):
    folder = STUDENTS[layers]
    card = (folder / "README.md").read_text()
    log = json.loads((folder / "training_log.json").read_text())
    for needed in ("Apache-2.0", "MIT", "make ladder-models", "tag_split", "nDCG@10", "models/starter-reranker",
                   "KL", "MiB", "<!-- figures:start -->", "<!-- figures:end -->"):
        assert needed in card, f"{folder.name} card does not mention {needed!r}"
    keep = ",".join(map(str, log["keep"]))
    if len(log["layer_trials"]) > 1:
        assert f"{keep} | " in card  # the layer-choice table
    else:
        assert f"teacher layers {keep} (given with --keep" in card


@pytest.mark.parametrize("layers", sorted(STUDENTS))
def test_student_log_choices_were_made_on_dev(layers):
    log = json.loads((STUDENTS[layers] / "training_log.json").read_text())
    assert log["layers"] == layers and len(log["keep"]) == layers
    assert log["settings"]["limit_groups"] is None and log["settings"]["limit_dev"] is None
    assert log["dev_tags"] == len(semanlink_queries("dev")) and log["train_tags"] == len(semanlink_queries("train"))
    # the layer set: given (one --keep), or the best dev nDCG@10 after the same trial groups among those tried
    if len(log["layer_trials"]) == 1:
        assert log["layer_trials"] == [{"keep": log["keep"]}] and log["settings"]["keep"] == [",".join(map(str, log["keep"]))]
    else:
        best_trial = max(log["layer_trials"], key=lambda t: t["dev_ndcg@10_trial"])
        assert log["keep"] == best_trial["keep"]
        assert len({t["trained_groups"] for t in log["layer_trials"]}) == 1
    # the epoch: best dev nDCG@10
    chosen = log["epochs"][log["chosen_epoch"] - 1]
    assert chosen["dev_ndcg@10"] == max(e["dev_ndcg@10"] for e in log["epochs"])
    # distillation helped over the first stage on dev, and the teacher it learnt from is the shipped one
    assert chosen["dev_ndcg@10"] > log["dev_first_stage_ndcg@10"]
    from crossrank.export import source_files

    assert log["teacher_files"] == source_files(STARTER)


@pytest.mark.parametrize("layers", sorted(STUDENTS))
def test_student_card_is_written_from_its_training_log(tmp_path, layers):
    """The card's tables come from training_log.json: rewriting it from the log changes nothing."""
    from crossrank.export.ladder import main

    copy = tmp_path / STUDENTS[layers].name
    copy.mkdir()
    for f in STUDENTS[layers].iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert main(["--layers", str(layers), "--out", str(copy), "--rewrite-card"]) == 0
    shipped = (STUDENTS[layers] / "README.md").read_text().replace(str(STUDENTS[layers].relative_to(MODELS.parent)),
                                                                   str(copy))
    assert (copy / "README.md").read_text() == shipped


@pytest.fixture(scope="module", params=sorted(STUDENTS))
def student_int8(request, tmp_path_factory):
    """Exported without --allow-low-fidelity: the export itself enforces the int8 Spearman bar."""
    from crossrank.export import export_model
    from crossrank.reranker import Reranker

    out = tmp_path_factory.mktemp(f"L{request.param}") / "int8"
    export_model(STUDENTS[request.param], out, kind="cross", precision="int8", quiet=True)
    return request.param, Reranker(out)


def test_student_int8_ranks_a_known_relevant_test_pair_first(student_int8):
    layers, reranker = student_int8
    query = next(q for q in semanlink_queries("test") if q.text == KNOWN_QUERY)
    relevant, others = _relevant_and_others(query, 20, seed=0)
    known = next(d for d in relevant if d.id == KNOWN_DOCUMENT)
    ranked = reranker.rerank(query.text, [known.text] + [d.text for d in others])
    assert ranked[0].index == 0, f"L{layers}: the relevant document came {[r.index for r in ranked].index(0) + 1}th"


def test_student_int8_scores_relevant_above_random_on_test_tags(student_int8):
    """Over 40 test tags: a relevant document beats a random one in most pairs (AUC). The 6-layer
    teacher scores 0.86 on these pairs (its own bar is 0.85); a student may lose a little of it, and
    it is judged on ranking quality by `make ladder-report`."""
    layers, reranker = student_int8
    auc = relevant_vs_random_auc(reranker)
    assert auc >= 0.80, f"L{layers}: relevant-vs-random AUC {auc:.3f}"


# -- the distillation pieces (no training) -----------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    import torch
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(STARTER, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(STARTER, use_fast=True)


def test_student_layers_are_copies_of_the_chosen_teacher_layers(teacher):
    import torch

    from crossrank.export.ladder import student_from_teacher

    student = student_from_teacher(teacher, (1, 3, 5))
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for j, i in enumerate((1, 3, 5)):
        mine = {k.split(f"encoder.layer.{j}.", 1)[1]: v for k, v in student_state.items() if f"encoder.layer.{j}." in k}
        assert len(mine) == 16  # attention q/k/v/out + 2 LayerNorms + the 2 FFN projections, weights and biases
        for rest, value in mine.items():
            assert torch.equal(value, teacher_state[f"bert.encoder.layer.{i}.{rest}"]), (j, rest)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                 "bert.embeddings.LayerNorm.weight", "bert.pooler.dense.weight", "classifier.weight",
                 "classifier.bias"):
        assert torch.equal(student_state[name], teacher_state[name]), name
    # copies, not shared tensors: training the student leaves the teacher alone
    assert student_state["classifier.weight"].data_ptr() != teacher_state["classifier.weight"].data_ptr()


def test_a_student_keeping_every_layer_scores_like_the_teacher(teacher, tokenizer):
    import torch

    from crossrank.export.ladder import student_from_teacher
    from crossrank.export.starter import group_logits

    pairs = [("Boosting", "What is the difference between bagging and boosting?"),
             ("knowledge graph", "A knowledge graph links entities with typed relations."),
             ("Boosting", "Semantic web ontologies in OWL.")]
    full = student_from_teacher(teacher, tuple(range(6))).eval()
    cut = student_from_teacher(teacher, (0, 5)).eval()
    with torch.inference_mode():
        expected = group_logits(teacher, tokenizer, pairs, 128, torch)
        assert torch.allclose(group_logits(full, tokenizer, pairs, 128, torch), expected, atol=1e-5)
        assert not torch.allclose(group_logits(cut, tokenizer, pairs, 128, torch), expected, atol=1e-2)


@pytest.mark.parametrize("keep", [(), (0, 0), (3, 1), (0, 6), (-1, 2)])
def test_bad_layer_sets_are_refused(teacher, keep):
    from crossrank.export.ladder import student_from_teacher

    with pytest.raises(ValueError, match="distinct ascending layer indices in 0..5"):
        student_from_teacher(teacher, keep)


def test_keep_parsing_and_default_spread():
    from crossrank.export.ladder import DEFAULT_KEEP, parse_keep, spread_layers

    assert parse_keep("0,5", 2, 6) == (0, 5)
    assert spread_layers(2, 6) == (2, 5) and spread_layers(3, 6) == (1, 3, 5) and spread_layers(1, 6) == (5,)
    for layers, sets in DEFAULT_KEEP.items():
        assert all(len(parse_keep(k, layers, 6)) == layers for k in sets)
    with pytest.raises(ValueError, match="names 3 layers; --layers asks for 2"):
        parse_keep("0,2,5", 2, 6)
    with pytest.raises(ValueError, match="distinct ascending indices in 0..5"):
        parse_keep("5,0", 2, 6)
    with pytest.raises(ValueError, match="not a comma-separated list"):
        parse_keep("0-5", 2, 6)


def test_distillation_loss_matches_a_hand_computation():
    import torch

    from crossrank.export.ladder import distillation_loss

    student = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0]])
    teacher = torch.tensor([[1.0, 1.0, -1.0], [3.0, 0.0, 0.0]])
    t, w_ce, w_kd, w_mse = 2.0, 0.5, 2.0, 0.1

    def log_softmax(row, temperature=1.0):
        z = [x / temperature for x in row]
        top = max(z)
        norm = top + math.log(sum(math.exp(x - top) for x in z))
        return [x - norm for x in z]

    ce = sum(-log_softmax(row)[0] for row in student.tolist()) / 2
    kl = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        log_p, log_q = log_softmax(t_row, t), log_softmax(s_row, t)
        kl += sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))
    kd = kl / 2 * t * t
    mse = sum((a - b) ** 2 for a, b in zip(student.flatten().tolist(), teacher.flatten().tolist())) / 6
    loss, parts = distillation_loss(student, teacher, t, w_ce, w_kd, w_mse, torch)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert parts["kd"] == pytest.approx(kd, rel=1e-6)
    assert parts["mse"] == pytest.approx(mse, rel=1e-6)
    assert loss.item() == pytest.approx(w_ce * ce + w_kd * kd + w_mse * mse, rel=1e-6)
    # the KL term vanishes when the student copies the teacher (up to a shift of a group's logits)
    _, same = distillation_loss(teacher + 3.0, teacher, t, 1.0, 1.0, 0.0, torch)
    assert same["kd"] == pytest.approx(0.0, abs=1e-6)


def test_teacher_scores_are_computed_once_and_cached_by_inputs(tmp_path, teacher, tokenizer):
    import torch

    from crossrank.export.ladder import TeacherScores
    from crossrank.export.starter import group_logits

    pairs = [("Boosting", "What is the difference between bagging and boosting?"),
             ("knowledge graph", "A knowledge graph links entities with typed relations.")]
    cache = TeacherScores(STARTER, 128, tmp_path)
    with pytest.raises(KeyError, match="no teacher score"):
        cache.of(pairs)
    assert cache.compute(teacher, tokenizer, pairs + pairs[:1], 128, torch) == 2  # duplicates scored once
    with torch.inference_mode():
        expected = group_logits(teacher, tokenizer, pairs, 128, torch).numpy()
    np.testing.assert_allclose(cache.of(pairs), expected, atol=1e-5)
    again = TeacherScores(STARTER, 128, tmp_path)  # from disk
    assert again.path == cache.path and again.missing(pairs) == []
    assert again.compute(teacher, tokenizer, pairs, 128, torch) == 0
    np.testing.assert_array_equal(again.of(pairs[::-1]), cache.of(pairs)[::-1])
    assert TeacherScores(STARTER, 64, tmp_path).path != cache.path  # another window, another cache


@pytest.mark.parametrize("argv, message", [
    (["--layers", "6"], "--layers must be 1..5"),
    (["--layers", "2", "--temperature", "0"], "--temperature must be > 0, got 0.0"),
    (["--layers", "2", "--ce-weight", "0", "--kd-weight", "0"], "not all 0"),
    (["--layers", "2", "--epochs", "0"], "--epochs must be >= 1, got 0"),
])
def test_distillation_arguments_are_checked(capsys, argv, message):
    from crossrank.export.ladder import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_default_output_folder_names_the_depth():
    from crossrank.export.ladder import parse_args

    assert parse_args(["--layers", "4"]).out == "models/starter-reranker-L4"


@pytest.mark.parametrize("layers", [2, 4])
def test_the_card_gives_the_command_that_trained_the_student(layers):
    from crossrank.export.ladder import parse_args, recipe_command

    log = json.loads((MODELS / f"starter-reranker-L{layers}" / "training_log.json").read_text())
    command = recipe_command(log["settings"])
    assert command in (MODELS / f"starter-reranker-L{layers}" / "README.md").read_text()
    again = vars(parse_args(command.split()[3:]))  # the command parses back to the logged settings
    assert {name: again[name] for name in log["settings"] if name != "teacher"} == \
        {name: value for name, value in log["settings"].items() if name != "teacher"}


# -- benchmarks/ladder_report.py: the timing protocol and the target check ---------------------------


def _ladder_report():
    import importlib.util

    path = MODELS.parent / "benchmarks" / "ladder_report.py"
    spec = importlib.util.spec_from_file_location("ladder_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_rounds_interleave_the_rerankers_in_rotating_order():
    report = _ladder_report()
    calls = []

    class Recorder:  # records the call order; the timing protocol is what is under test
        def __init__(self, name):
            self.name = name

        def rerank(self, query, documents):
            calls.append((self.name, query))

    rerankers = {name: Recorder(name) for name in ("a", "b", "c")}
    requests = [(f"q{i}", ["doc"]) for i in range(4)]
    samples = report.interleaved_latency(rerankers, requests, warmup=1)
    timed = calls[3:]  # after one warm-up request on each
    assert [name for name, _ in timed] == list("abc" "bca" "cab" "abc")
    assert [query for _, query in timed] == [f"q{i}" for i in range(4) for _ in range(3)]
    assert all(len(ms) == 4 and min(ms) >= 0 for ms in samples.values())


def test_target_check_compares_the_2_layer_int8_rung_with_the_6_layer_int8_rung():
    report = _ladder_report()
    first = {"ndcg@10": 0.40}
    rows = {f"{n} layers {p}": {"layers": n, "ndcg@10": v} for n, p, v in
            [(2, "fp32", 0.43), (2, "int8", 0.426), (6, "fp32", 0.45), (6, "int8", 0.44)]}
    samples = {"2 layers fp32": [40, 50, 60], "2 layers int8": [30, 35, 40], "6 layers fp32": [150, 150, 150],
               "6 layers int8": [100, 100, 100]}
    target = report.add_speed_and_gain(rows, first, samples, pairs=300)
    assert target["rung"] == "2 layers int8"
    assert target["gain_kept"] == pytest.approx(0.026 / 0.04)
    assert target["latency_share"] == pytest.approx(0.35)
    assert target["met"]
    assert rows["2 layers int8"]["pairs_per_s"] == pytest.approx(300 / 0.105)
    assert target["gain_kept_vs_fp32"] == pytest.approx(0.026 / 0.05)
    rows["2 layers int8"]["ndcg@10"] = 0.42  # 50% of the gain: not met
    assert not report.add_speed_and_gain(rows, first, samples, pairs=300)["met"]
