"""A generated MultiRC-like set whose rationale is known: templated facts about a few people.

Every passage states facts about ``n_entities`` people, one sentence per fact, from a small
set of attributes (where they live, their job, pet, sport, food, drink)::

    anna lives in paris .  bob works as a pilot .  anna owns a cat .  carl lives in rome .

The question asks one attribute of one person ("where does anna live ?"), the candidate answer
is one value of that attribute ("rome"), and the label is True exactly when the passage's one
sentence about that person and attribute (the *evidence*) states that value. The other
sentences are distractors: other attributes of the same person, and the same attribute of other
people, whose values are drawn from the same short lists so that they often repeat. A wrong
answer is, with probability ``hard_negative``, a value the passage states for somebody else,
so the answer word appears in the passage whatever the label and only the evidence sentence
decides it (a random wrong value may appear in the passage too, by chance).

Sampling is one seeded :class:`numpy.random.Generator` stream; an example costs about 0.1 ms
(3000 in 0.4 s).
"""

from __future__ import annotations

import numpy as np

from cosmo_sop.config import fill_defaults
from cosmo_sop.tasks.text.examples import Example

NAMES = (
    "anna", "bob", "carl", "dave", "emma", "frank", "grace", "henry", "iris", "jack", "kate",
    "liam", "mia", "noah", "olga", "paul", "rosa", "sam", "tina", "victor",
)  # fmt: skip

#: attribute -> (question template, sentence template, values); "{n}" the person, "{v}" the value.
ATTRIBUTES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "city": (
        "where does {n} live ?",
        "{n} lives in {v} .",
        ("paris", "rome", "london", "berlin", "madrid", "vienna", "oslo", "dublin"),
    ),
    "job": (
        "what job does {n} have ?",
        "{n} works as a {v} .",
        ("doctor", "teacher", "lawyer", "baker", "farmer", "pilot", "nurse", "chef"),
    ),
    "pet": (
        "what pet does {n} own ?",
        "{n} owns a {v} .",
        ("dog", "cat", "horse", "parrot", "rabbit", "snake", "goat", "mouse"),
    ),
    "sport": (
        "what sport does {n} play ?",
        "{n} plays {v} .",
        ("tennis", "golf", "chess", "soccer", "hockey", "rugby", "cricket", "baseball"),
    ),
    "food": (
        "what food does {n} like ?",
        "{n} likes {v} .",
        ("pizza", "rice", "pasta", "bread", "soup", "cheese", "apples", "noodles"),
    ),
    "drink": (
        "what does {n} drink ?",
        "{n} drinks {v} .",
        ("tea", "coffee", "milk", "juice", "water", "beer", "wine", "cocoa"),
    ),
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)


def make_synthetic(
    n: int,
    seed: int,
    n_entities: int | None = None,
    min_sentences: int | None = None,
    max_sentences: int | None = None,
    hard_negative: float | None = None,
    id_prefix: str = "synthetic",
) -> list[Example]:
    """``n`` examples, half True and half False in expectation, each with one evidence sentence.

    Parameters
    ----------
    n
        Number of examples; each has its own passage (docid ``<id_prefix>-<i>``).
    seed
        Seed of the one random stream.
    n_entities
        People per passage (2 to 20).
    min_sentences, max_sentences
        Passage length in sentences, uniform in [min, max]; at most ``n_entities`` x 6.
    hard_negative
        Probability that a wrong answer is a value the passage states for another person (a
        sentence stating it is put in), rather than a random other value.
    id_prefix
        Prefix of annotation ids and docids.

    The options left None take the config schema's ``bert_text.synthetic`` defaults.

    Returns
    -------
    list of Example
        ``evidence_sentences`` is the one evidence sentence, ``evidence`` its token span.
    """
    options = fill_defaults(
        "bert_text.synthetic",
        n_entities=n_entities,
        min_sentences=min_sentences,
        max_sentences=max_sentences,
        hard_negative=hard_negative,
    )
    n_entities, min_sentences = options["n_entities"], options["min_sentences"]
    max_sentences, hard_negative = options["max_sentences"], options["hard_negative"]
    n_facts = n_entities * len(ATTRIBUTES)
    if not 2 <= n_entities <= len(NAMES):
        raise ValueError(f"n_entities must lie in [2, {len(NAMES)}], got {n_entities}")
    if not 2 <= min_sentences <= max_sentences <= n_facts:
        raise ValueError(
            f"need 2 <= min_sentences <= max_sentences <= {n_facts}, "
            f"got {min_sentences}, {max_sentences}"
        )
    rng = np.random.default_rng(seed)
    n_values = len(next(iter(ATTRIBUTES.values()))[2])
    examples = []
    for i in range(n):
        names = rng.choice(len(NAMES), n_entities, replace=False)
        # values[e, a]: index of person e's value of attribute a; person 0 is asked about.
        values = rng.integers(n_values, size=(n_entities, len(ATTRIBUTES)))
        asked = int(rng.integers(len(ATTRIBUTES)))
        label = int(rng.random() < 0.5)
        n_sentences = int(rng.integers(min_sentences, max_sentences + 1))
        truth = int(values[0, asked])

        # Distractor facts (person, attribute) other than the asked one, the related ones (same
        # person or same attribute) twice as likely.
        person, attribute = np.divmod(np.arange(n_facts), len(ATTRIBUTES))
        others = (person != 0) | (attribute != asked)
        weight = np.where((person == 0) | (attribute == asked), 2.0, 1.0)[others]
        candidates = np.flatnonzero(others)
        chosen = rng.choice(candidates, n_sentences - 1, replace=False, p=weight / weight.sum())

        if label:
            answer = truth
        elif rng.random() < hard_negative:
            # A hard negative: somebody else's stated value of the asked attribute.
            other = int(rng.integers(1, n_entities))
            if values[other, asked] == truth:
                values[other, asked] = (truth + int(rng.integers(1, n_values))) % n_values
            answer = int(values[other, asked])
            fact = other * len(ATTRIBUTES) + asked
            if fact not in chosen:
                chosen[int(rng.integers(len(chosen)))] = fact
        else:
            answer = int(rng.choice([v for v in range(n_values) if v != truth]))

        facts = np.concatenate([[asked], chosen])  # the evidence is fact 0 (person 0)
        order = rng.permutation(n_sentences)
        sentences = []
        for f in facts[order]:
            e, a = divmod(int(f), len(ATTRIBUTES))
            _, template, vocabulary = ATTRIBUTES[ATTRIBUTE_NAMES[a]]
            text = template.format(n=NAMES[names[e]], v=vocabulary[values[e, a]])
            sentences.append(tuple(text.split()))
        evidence_sentence = int(np.flatnonzero(order == 0)[0])
        start = sum(len(s) for s in sentences[:evidence_sentence])
        question_template, _, vocabulary = ATTRIBUTES[ATTRIBUTE_NAMES[asked]]
        examples.append(
            Example(
                annotation_id=f"{id_prefix}-{i}:0:0",
                docid=f"{id_prefix}-{i}",
                sentences=tuple(sentences),
                question=tuple(question_template.format(n=NAMES[names[0]]).split()),
                answer=(vocabulary[answer],),
                label=label,
                evidence=((start, start + len(sentences[evidence_sentence])),),
                evidence_sentences=(evidence_sentence,),
            )
        )
    return examples
