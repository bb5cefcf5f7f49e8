"""The bert_text task's data and metrics: the synthetic set, the ERASER reader, the clause
layout and ERASER's rationale scores (no model needed, except the tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cosmo_sop.errors import InputError
from cosmo_sop.tasks.text import metrics as M
from cosmo_sop.tasks.text.encoder import clause_spans, encode, load_tokenizer
from cosmo_sop.tasks.text.eraser import load_eraser
from cosmo_sop.tasks.text.synthetic import ATTRIBUTES, NAMES, make_synthetic

# -- synthetic set ----------------------------------------------------------------------------


def _decide(example) -> tuple[int, list[int]]:
    """Label and evidence sentences re-derived from the text alone: the sentences about the
    asked person and attribute, and whether one of them states the answer."""
    question = " ".join(example.question)
    for q_template, s_template, values in ATTRIBUTES.values():
        for person in NAMES:
            if q_template.format(n=person) == question:
                prefix = s_template.format(n=person, v="\0").split("\0")[0]
                about = [
                    i
                    for i, s in enumerate(example.sentences)
                    if " ".join(s).startswith(prefix) and s[len(prefix.split())] in values
                ]
                stated = {example.sentences[i][len(prefix.split())] for i in about}
                return int(example.answer[0] in stated), about
    raise AssertionError(f"question matches no template: {question}")


def test_synthetic_evidence_decides_the_label():
    examples = make_synthetic(600, seed=3, hard_negative=0.5)
    labels = np.array([e.label for e in examples])
    assert 0.4 < labels.mean() < 0.6
    for e in examples:
        label, about = _decide(e)
        assert label == e.label
        assert about == list(e.evidence_sentences) and len(about) == 1
        starts = e.sentence_starts()
        (i,) = about
        assert e.evidence == ((starts[i], starts[i + 1]),)


def test_synthetic_changing_the_evidence_value_flips_the_label():
    for e in make_synthetic(200, seed=4):
        (i,) = e.evidence_sentences
        sentence = list(e.sentences[i])
        position = [k for k, w in enumerate(sentence) if w != "." and k > 0][-1]
        sentence[position] = e.answer[0] if not e.label else "nothing"
        flipped = e.__class__(
            **{
                **e.__dict__,
                "sentences": (*e.sentences[:i], tuple(sentence), *e.sentences[i + 1 :]),
            }
        )
        assert _decide(flipped)[0] == 1 - e.label


def test_synthetic_hard_negatives_put_the_wrong_answer_in_the_passage():
    examples = make_synthetic(400, seed=5, hard_negative=1.0)
    wrong = [e for e in examples if not e.label]
    present = np.mean([any(e.answer[0] in s for s in e.sentences) for e in wrong])
    assert present == 1.0


def test_synthetic_is_seeded():
    assert make_synthetic(50, seed=7) == make_synthetic(50, seed=7)
    assert make_synthetic(50, seed=7) != make_synthetic(50, seed=8)


# -- ERASER reader ------------------------------------------------------------------------------


def _write_eraser(root, annotations=None, docs=None):
    docs = docs or {
        "story.txt": (
            "Anna lives in Paris , near the river .\nBob works as a pilot .\n\nShe owns a cat .\n"
        )
    }
    (root / "docs").mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (root / "docs" / name).write_text(text)
    evidence = {
        "docid": "story.txt",
        "start_token": 0,
        "end_token": 9,
        "start_sentence": 0,
        "end_sentence": 1,
        "text": "Anna lives in Paris , near the river .",
    }
    annotations = annotations or [
        {
            "annotation_id": "story.txt:0:0",
            "classification": "True",
            "query": "Where does Anna live ? || Paris",
            "evidences": [[evidence]],
            "query_type": None,
            "docids": None,
        },
        {
            "annotation_id": "story.txt:1:0",
            "classification": "False",
            "query": "What pet does Anna own ? || a dog",
            "evidences": [
                [
                    {
                        **evidence,
                        "start_token": 15,
                        "end_token": 20,
                        "start_sentence": 2,
                        "end_sentence": 3,
                        "text": "She owns a cat .",
                    }
                ]
            ],
            "query_type": None,
            "docids": None,
        },
    ]
    for split in ("train", "val", "test"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(a) + "\n" for a in annotations))
    return root


def test_eraser_reads_the_benchmark_format(tmp_path):
    examples = load_eraser(_write_eraser(tmp_path), "val")
    assert len(examples) == 2
    first, second = examples
    assert first.docid == "story.txt" and first.label == 1 and second.label == 0
    assert first.question == ("Where", "does", "Anna", "live", "?") and first.answer == ("Paris",)
    assert second.answer == ("a", "dog")
    assert len(first.sentences) == 3  # the empty line is skipped, as ERASER does
    assert first.evidence == ((0, 9),) and first.evidence_sentences == (0,)
    assert second.evidence_sentences == (2,)
    words = [w for s in second.sentences for w in s]
    assert " ".join(words[15:20]) == "She owns a cat ."
    assert len(load_eraser(tmp_path, "test", max_examples=1)) == 1


@pytest.mark.parametrize(
    "problem, edit",
    [
        ("line 2: not valid JSON", lambda lines: [lines[0], "{not json\n"]),
        ("classification must be one of", lambda lines: [lines[0].replace('"True"', '"Maybe"')]),
        ("not found in", lambda lines: [lines[0].replace("story.txt", "missing.txt")]),
        ("outside document", lambda lines: [lines[0].replace('"end_token": 9', '"end_token": 99')]),
        ("query must be", lambda lines: [lines[0].replace(" || Paris", " Paris")]),
        ("annotation lacks", lambda lines: [lines[0].replace('"evidences"', '"evidence"')]),
    ],
)
def test_eraser_bad_input_names_file_and_line(tmp_path, problem, edit):
    root = _write_eraser(tmp_path)
    path = root / "train.jsonl"
    path.write_text("".join(edit(path.read_text().splitlines(keepends=True))))
    with pytest.raises(InputError, match=problem) as info:
        load_eraser(root, "train")
    assert "train.jsonl" in str(info.value) and "\n" not in str(info.value)


def test_eraser_missing_files(tmp_path):
    with pytest.raises(InputError, match="annotation file not found"):
        load_eraser(tmp_path, "train")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(InputError, match="documents folder not found"):
        load_eraser(tmp_path, "train")


# -- clause layout ------------------------------------------------------------------------------


def test_clauses_split_at_punctuation_and_sentence_ends():
    sentences = [("a", "b", ",", "c", "."), ("d", "e")]
    assert clause_spans(sentences) == [(0, 3, 0), (3, 5, 0), (5, 7, 1)]


def test_encode_layout_and_context(tmp_path):
    tokenizer = load_tokenizer()
    examples = load_eraser(_write_eraser(tmp_path), "train")
    enc = encode(examples, tokenizer, max_length=40, max_segments=16)
    tokens = tokenizer.convert_ids_to_tokens(enc.ids[0].tolist())
    sep = tokens.index("[SEP]")
    assert tokens[0] == "[CLS]" and tokens[1:sep] == ["where", "does", "anna", "live", "?"]
    labels = enc.segments[0, 0]
    assert (labels[: sep + 3] == -1).all()  # [CLS] question [SEP] answer [SEP]
    assert (labels[enc.ids[0] == 0] == -1).all()  # padding is context
    assert enc.n_segments[0] == 4 and enc.clauses[0][:, 3].tolist() == [0, 1, 2, 3]
    # the passage positions of segment 0 spell "anna lives in paris ,"
    words = tokenizer.convert_ids_to_tokens(enc.ids[0][labels == 0].tolist())
    assert words == ["anna", "lives", "in", "paris", ","]
    # too many clauses are merged into max_segments runs; too little room drops clauses
    merged = encode(examples, tokenizer, max_length=40, max_segments=2)
    assert merged.n_segments[0] == 2 and merged.clauses[0][:, 3].tolist() == [0, 0, 1, 1]
    short = encode(examples, tokenizer, max_length=20, max_segments=16)
    assert short.truncated[0] and len(short.clauses[0]) < 4


def test_synthetic_fits_the_default_length():
    from cosmo_sop.config import defaults

    cfg = defaults("bert_text")
    examples = make_synthetic(500, seed=1, **cfg["synthetic"])
    enc = encode(examples, load_tokenizer(), cfg["max_length"], cfg["max_segments"])
    assert not enc.truncated.any()
    assert (enc.n_segments == [len(e.sentences) for e in examples]).all()


# -- ERASER metrics -----------------------------------------------------------------------------


def test_iou_and_token_f1_follow_eraser():
    gold = [(0, 10), (20, 25)]
    # (0, 6) has IOU 0.6 with (0, 10): a match; (30, 40) matches nothing
    assert M.iou_precision_recall([(0, 6), (30, 40)], gold) == (0.5, 0.5)
    assert M.iou_precision_recall([(0, 4)], gold) == (0.0, 0.0)  # IOU 0.4
    assert M.iou_precision_recall([], gold) == (0.0, 0.0)
    assert M.token_f1([(0, 10), (20, 25)], gold) == 1.0
    p, r = 5 / 10, 5 / 15
    assert M.token_f1([(5, 15)], gold) == pytest.approx(2 * p * r / (p + r))
    # IOU F1 is the F1 of mean precision and mean recall (ERASER's macro)
    precision, recall = np.array([1.0, 0.0]), np.array([0.5, 0.0])
    est = M.iou_f1_estimate(precision, recall, ["a", "b"], 200, 0)
    assert est.estimate == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_rationale_spans_merge_within_sentences():
    clauses = np.array([[0, 3, 0, 0], [3, 5, 0, 1], [5, 7, 1, 2], [7, 9, 1, 3]])
    assert M.rationale_spans(np.array([1, 1, 1, 0], bool), clauses) == [(0, 5), (5, 7)]
    assert M.rationale_spans(np.array([1, 0, 0, 1], bool), clauses) == [(0, 3), (7, 9)]


def test_segment_choices():
    generator = torch.Generator().manual_seed(0)
    scores = torch.tensor([[[0.7, 0.2], [0.3, 0.8], [0.0, 0.0]]])  # (1, m=3, K=2)
    tokens = torch.tensor([[[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]], dtype=torch.bool)
    valid = torch.tensor([[True, True, False]])
    top = M.top_group_segments(scores, tokens, valid, torch.tensor([1]))
    assert top.tolist() == [[False, True, True, False]]
    summed = M.summed_segment_scores(scores, tokens, torch.tensor([0]))
    assert summed.tolist() == [[pytest.approx(0.7), pytest.approx(0.3), pytest.approx(0.3), 0.0]]
    k, n = torch.tensor([1]), torch.tensor([4])
    assert M.top_k_segments(summed, k, n, generator).tolist() == [[True, False, False, False]]
    drawn = M.random_segments(torch.tensor([2, 1]), torch.tensor([3, 2]), 4, generator)
    assert drawn.sum(1).tolist() == [2, 1] and not drawn[0, 3] and not drawn[1, 2:].any()


def test_keep_segments_and_faithfulness_scores():
    x = torch.ones(1, 2, 1, 5)
    segments = torch.tensor([[[-1, 0, 0, 1, -1]]])
    kept = torch.tensor([[False, True]])
    assert M.keep_segments(x, segments, kept)[0, 0, 0].tolist() == [1, 0, 0, 1, 1]
    p = torch.tensor([[0.2, 0.8]])
    c, s = M.comprehensiveness_sufficiency(
        p, torch.tensor([[0.6, 0.4]]), torch.tensor([[0.1, 0.9]]), torch.tensor([1])
    )
    assert c.item() == pytest.approx(0.4) and s.item() == pytest.approx(-0.1)
