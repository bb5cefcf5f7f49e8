"""Reader of ERASER MultiRC (DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP
Models", ACL 2020; http://www.eraserbenchmark.com, code github.com/jayded/eraserbenchmark).

The format, as the benchmark's own reader (``rationale_benchmark/utils.py``) and the
TensorFlow/Hugging Face ``eraser_multi_rc`` builders read it::

    <root>/train.jsonl, val.jsonl, test.jsonl   one JSON object (an annotation) per line
    <root>/docs/<docid>                          a passage: one sentence per line, tokens
                                                 separated by single spaces

An annotation holds ``annotation_id`` (``"<docid>:<question>:<answer>"`` in MultiRC),
``classification`` (``"True"`` or ``"False"``: is the answer right), ``query``
(``"question || answer"``), ``evidences`` (a list of evidence groups, each a list of
``{docid, start_token, end_token, start_sentence, end_sentence, text}``; token offsets count
the passage's tokens over all its sentences, ``end_*`` exclusive) and optionally ``docids``
and ``query_type`` (``null`` in MultiRC). The passage is named by the evidences' ``docid``
(the builders read ``evidences[0][0]["docid"]``), else by ``docids``, else by the
``annotation_id`` before its first colon. Empty lines of a document are skipped and tokens are
split at single spaces, as ERASER's ``load_documents`` does; a ``docs.jsonl`` file
(``{"docid": ..., "document": ...}`` per line) is read instead of ``docs/`` where a dataset
ships one.

Bad input raises :class:`~cosmo_sop.errors.InputError` naming the file and line: a missing
file or document, a line that is not JSON or lacks a field, an unknown label, a query without
``||``, or evidence outside its document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cosmo_sop.errors import InputError
from cosmo_sop.tasks.text.examples import CLASSES, Example

SPLITS = ("train", "val", "test")


def load_eraser(
    root: str | os.PathLike, split: str, max_examples: int | None = None
) -> list[Example]:
    """The annotations of one split with their passages, in file order.

    Parameters
    ----------
    root
        Folder with ``<split>.jsonl`` and ``docs/`` (or ``docs.jsonl``).
    split
        ``"train"``, ``"val"`` or ``"test"``.
    max_examples
        Read only the first this many annotations (None: all).

    Raises
    ------
    InputError
        Naming the file (and line) of the first problem.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(path, "ERASER annotation file not found")
    documents = _Documents(root)
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if max_examples is not None and len(examples) >= max_examples:
                break
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {number}: not valid JSON ({exc.msg})") from None
            examples.append(_example(record, documents, where))
    return examples


def _example(record: Any, documents: _Documents, where: str) -> Example:
    """One annotation and its passage as an :class:`Example`."""
    if not isinstance(record, dict):
        raise InputError(where, "an annotation must be a JSON object")
    missing = [
        k for k in ("annotation_id", "classification", "query", "evidences") if k not in record
    ]
    if missing:
        raise InputError(where, f"annotation lacks {missing}")
    annotation_id = str(record["annotation_id"])
    label = record["classification"]
    if label not in CLASSES:
        raise InputError(where, f"classification must be one of {list(CLASSES)}, got {label!r}")
    query = record["query"]
    if not isinstance(query, str) or "||" not in query:
        raise InputError(where, f"query must be 'question || answer', got {query!r}")
    question, answer = query.split("||", 1)

    evidences = record["evidences"]
    if not isinstance(evidences, list) or not all(isinstance(g, list) for g in evidences):
        raise InputError(where, "evidences must be a list of lists of evidence objects")
    flat = [evidence for group in evidences for evidence in group]
    docid = _docid(record, flat, where)
    sentences = documents.get(docid, where)
    starts = [0]
    for sentence in sentences:
        starts.append(starts[-1] + len(sentence))
    spans, sentence_ids = [], set()
    for evidence in flat:
        start, end = _span(evidence, starts[-1], where)
        spans.append((start, end))
        # The sentences a token span touches (the token offsets are the official evidence).
        sentence_ids.update(
            i for i in range(len(sentences)) if starts[i] < end and start < starts[i + 1]
        )
    return Example(
        annotation_id=annotation_id,
        docid=docid,
        sentences=sentences,
        question=tuple(question.split()),
        answer=tuple(answer.split()),
        label=CLASSES.index(label),
        evidence=tuple(sorted(set(spans))),
        evidence_sentences=tuple(sorted(sentence_ids)),
    )


def _docid(record: dict, evidences: list[Any], where: str) -> str:
    """The passage of an annotation: its evidences' docid, else ``docids``, else the id's head."""
    named = set()
    for evidence in evidences:
        if not isinstance(evidence, dict) or "docid" not in evidence:
            raise InputError(where, f"evidence must be an object with a docid, got {evidence!r}")
        named.add(str(evidence["docid"]))
    if not named and record.get("docids"):
        named = {str(d) for d in record["docids"]}
    if not named:
        named = {str(record["annotation_id"]).split(":", 1)[0]}
    if len(named) > 1:
        raise InputError(where, f"evidence from several documents {sorted(named)}")
    return named.pop()


def _span(evidence: dict, n_tokens: int, where: str) -> tuple[int, int]:
    """(start_token, end_token) of one evidence, checked against its document's length."""
    try:
        start, end = int(evidence["start_token"]), int(evidence["end_token"])
    except (KeyError, TypeError, ValueError):
        raise InputError(where, "evidence needs integer start_token and end_token") from None
    if not 0 <= start < end <= n_tokens:
        raise InputError(
            where,
            f"evidence tokens [{start}, {end}) outside document {evidence['docid']!r} "
            f"of {n_tokens} tokens",
        )
    return start, end


class _Documents:
    """Passages by docid, read on first use from ``docs/<docid>`` or ``docs.jsonl``."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "docs"
        self.cache: dict[str, tuple[tuple[str, ...], ...]] = {}
        jsonl = root / "docs.jsonl"
        if jsonl.is_file() and not self.folder.is_dir():
            for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    record = json.loads(line)
                    self.cache[str(record["docid"])] = _sentences(record["document"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(
                        jsonl, f"line {number}: not a {{docid, document}} object"
                    ) from None
        elif not self.folder.is_dir():
            raise InputError(self.folder, "ERASER documents folder not found")

    def get(self, docid: str, where: str) -> tuple[tuple[str, ...], ...]:
        if docid not in self.cache:
            path = self.folder / docid
            # A docid is a file name in docs/, never a path elsewhere.
            if Path(docid).name != docid or not path.is_file():
                raise InputError(where, f"document {docid!r} not found in {self.folder}")
            self.cache[docid] = _sentences(path.read_text(encoding="utf-8"))
            if not self.cache[docid]:
                raise InputError(path, "empty document")
        return self.cache[docid]


def _sentences(text: str) -> tuple[tuple[str, ...], ...]:
    """Sentences (non-empty lines) of a document, as tuples of its space-separated tokens."""
    lines = (line.strip() for line in text.split("\n"))
    return tuple(tuple(t for t in line.split(" ") if t) for line in lines if line)
