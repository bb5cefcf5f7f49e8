"""The record of one reading-comprehension example, shared by the synthetic set and ERASER.

A MultiRC example is a passage, a question, one candidate answer and whether the answer is
right ("True") or wrong ("False"), with the evidence: the token spans of the passage that
decide the label. Tokens are words as ERASER stores them (space-separated, punctuation split
off), counted over the passage's sentences in order (ERASER's ``start_token``/``end_token``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Class names in class-index order: index 0 is "False", 1 is "True" (ERASER's ``classification``).
CLASSES = ("False", "True")


@dataclass(frozen=True)
class Example:
    """One (passage, question, answer) with its label and evidence.

    Attributes
    ----------
    annotation_id
        Unique id of the example (ERASER's ``annotation_id``).
    docid
        Id of the passage; examples sharing a passage are resampled together by the bootstrap.
    sentences
        The passage, one tuple of word tokens per sentence.
    question, answer
        Word tokens of the question and of the candidate answer.
    label
        Class index: 1 if the answer is right (``"True"``), 0 if not.
    evidence
        Gold rationale: token spans (start, end) of the passage, end exclusive, counted over all
        sentences in order.
    evidence_sentences
        Indices of the sentences the evidence lies in, sorted.
    """

    annotation_id: str
    docid: str
    sentences: tuple[tuple[str, ...], ...]
    question: tuple[str, ...]
    answer: tuple[str, ...]
    label: int
    evidence: tuple[tuple[int, int], ...]
    evidence_sentences: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        """Number of word tokens of the passage."""
        return sum(len(sentence) for sentence in self.sentences)

    def sentence_starts(self) -> tuple[int, ...]:
        """Token offset of every sentence's first token (length: sentences + 1, last = total)."""
        starts, total = [0], 0
        for sentence in self.sentences:
            total += len(sentence)
            starts.append(total)
        return tuple(starts)
