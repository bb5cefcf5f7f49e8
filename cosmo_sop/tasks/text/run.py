"""Task ``bert_text``: Sum-of-Parts around a fine-tuned MiniLM on MultiRC-style questions.

:func:`run` makes the data (the synthetic set of :mod:`.synthetic` by default, ERASER MultiRC
with ``bert_text.source: eraser``), fine-tunes the MiniLM classifier with the project's
trainer, trains SOP with clause tokens around it, and scores SOP's rationales with ERASER's
metrics against a random rationale of the same size and Integrated Gradients summed per
clause. It writes into ``output_dir``::

    models/backbone/   the fine-tuned classifier (fit's run folder)
    models/sop/        the SOP model
    rationales.png     test passages: gold evidence beside SOP's chosen clauses
    task_metrics.json  settings, summary numbers, tables (written last)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop.config import defaults, with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.storage import write_json
from cosmo_sop.tasks.text import metrics as M
from cosmo_sop.tasks.text.data import TextDataset
from cosmo_sop.tasks.text.encoder import MiniLMClassifier, encode, load_tokenizer
from cosmo_sop.tasks.text.eraser import load_eraser
from cosmo_sop.tasks.text.examples import Example
from cosmo_sop.tasks.text.synthetic import make_synthetic
from cosmo_sop.training.evaluation import evaluate
from cosmo_sop.training.loop import derived_seed, fit
from cosmo_sop.training.options import WORKFLOW_KEYS
from cosmo_sop.training.runs import sop_model_settings

TASK = "bert_text"
#: Training options every text run needs: classification, no image symmetries or cell masks
#: (the trainer's masking acts on image maps; clause masking is done in the predict function).
TEXT_TRAINING = {"loss": "cross_entropy", "augment": False, "mask_probability": 0.0}
#: Purposes of derived seeds.
_DATA, _BACKBONE, _SOP, _RATIONALE, _BOOT = range(5)


def settings_of(config: dict[str, Any] | None) -> dict[str, Any]:
    """The task's settings: the ``bert_text`` section with defaults, and the options of the two
    training runs and of SOP merged from the config's ``training`` and ``sop`` sections."""
    config = dict(config or {})
    section = with_defaults(TASK, config.get(TASK), where=f"config key '{TASK}'")
    base = with_defaults("training", config.get("training"), where="config key 'training'")
    sop_base = with_defaults("sop", config.get("sop"), where="config key 'sop'")
    sop = {**sop_base, **{k: v for k, v in section["sop"].items() if k != "training"}}
    sop_training = {**sop_base["training"], **section["sop"].get("training", {})}
    return {
        "seed": int(config.get("seed", defaults("seed"))),
        **section,
        "backbone_training": {**base, **section["training"], **TEXT_TRAINING},
        "sop_training": {**base, **sop_training, **TEXT_TRAINING},
        "sop": sop,
    }


def run(config: dict[str, Any] | None, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the task and write its outputs into ``output_dir``; returns ``task_metrics.json``.

    Parameters
    ----------
    config
        A config (keys ``seed``, ``training``, ``sop`` and ``bert_text`` are read; absent ones
        take the schema's defaults).
    output_dir
        Folder for the models, the figure and ``task_metrics.json`` (created if needed).
    """
    start = time.perf_counter()
    cfg = settings_of(config)
    seed = cfg["seed"]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    examples = _examples(cfg, seed)
    tokenizer = load_tokenizer()
    encoded = {
        split: encode(items, tokenizer, cfg["max_length"], cfg["max_segments"])
        for split, items in examples.items()
    }
    data = {
        split: TextDataset(
            enc,
            {
                "task": TASK,
                "source": cfg["source"],
                "split": split,
                "n": len(examples[split]),
                "seed": seed,
                "max_length": cfg["max_length"],
                "max_segments": cfg["max_segments"],
            },
        )
        for split, enc in encoded.items()
    }
    timings["data"] = time.perf_counter() - tick

    # -- backbone ---------------------------------------------------------------------------
    tick = time.perf_counter()
    torch.manual_seed(derived_seed(seed, _BACKBONE))
    backbone = MiniLMClassifier(n_classes=2)
    predict_backbone = _backbone_predict(
        cfg["backbone_mask_probability"], cfg["backbone_mask_min_keep"]
    )
    train_cfg = {"seed": seed, **_fit_options(cfg["backbone_training"])}
    fit(
        backbone,
        data["train"],
        data["val"],
        predict_backbone,
        train_cfg,
        out / "models" / "backbone",
        model_config={"kind": "backbone", "backbone": backbone.config},
    )
    backbone.eval().requires_grad_(False)
    device = next(backbone.parameters()).device
    timings["backbone"] = time.perf_counter() - tick

    # -- SOP --------------------------------------------------------------------------------
    tick = time.perf_counter()
    torch.manual_seed(derived_seed(seed, _SOP))
    sop_settings = sop_model_settings(cfg["sop"])
    sop_settings.pop("encoder_blocks")
    sop_settings.update(tokens="segments", task="classification")
    sop = SumOfParts.from_backbone(
        backbone,
        (backbone.hidden_size, 1, cfg["max_length"]),
        encoder_blocks=cfg["sop"]["encoder_blocks"],
        **sop_settings,
    )
    sop_train = data["train"]
    if cfg["n_sop_train"] is not None and cfg["n_sop_train"] < len(sop_train):
        sop_train = torch.utils.data.Subset(sop_train, range(cfg["n_sop_train"]))
        sop_train.provenance = {**data["train"].provenance, "n": cfg["n_sop_train"]}
    sop_cfg = {"seed": seed, **_fit_options(cfg["sop_training"])}
    fit(
        sop,
        sop_train,
        data["val"],
        _sop_predict,
        sop_cfg,
        out / "models" / "sop",
        model_config={"kind": "sop", "backbone": backbone.config, "sop": sop.config},
    )
    sop.eval()
    timings["sop"] = time.perf_counter() - tick

    # -- evaluation -------------------------------------------------------------------------
    tick = time.perf_counter()
    test, enc = data["test"], encoded["test"]
    batch_size = cfg["sop_training"]["eval_batch_size"]
    backbone_eval = evaluate(
        backbone,
        test,
        _plain_predict,
        batch_size=batch_size,
        device=str(device),
        loss="cross_entropy",
    )
    parts = _explain(sop, test, batch_size, device)
    labels = enc.labels
    sop_accuracy = float((parts["prediction"].argmax(1).numpy() == labels).mean())
    timings["sop_explain"] = time.perf_counter() - tick

    tick = time.perf_counter()
    rationales = _rationales(cfg, backbone, sop, test, enc, parts, seed, device)
    scored = {
        name: _score(backbone, test, enc, examples["test"], chosen, batch_size, device)
        for name, chosen in rationales.items()
    }
    timings["rationales"] = time.perf_counter() - tick

    docids = [e.docid for e in examples["test"]]
    n_boot, boot_seed = cfg["n_boot"], derived_seed(seed, _BOOT)
    backbone_correct = (backbone_eval["predictions"].argmax(1) == labels).astype(float)
    sop_correct = (parts["prediction"].argmax(1).numpy() == labels).astype(float)
    accuracy = {
        "backbone": M.mean_estimate(backbone_correct, docids, n_boot, boot_seed),
        "sop": M.mean_estimate(sop_correct, docids, n_boot, boot_seed),
        "sop_minus_backbone": M.mean_estimate(
            sop_correct - backbone_correct, docids, n_boot, boot_seed
        ),
    }
    tables, summary = _tables(scored, accuracy, docids, n_boot, boot_seed)

    figure = "rationales.png"
    _figure(out / figure, examples["test"], enc, parts, rationales["sop"], cfg["figure_examples"])
    summary.update(
        backbone_accuracy=accuracy["backbone"].estimate,
        sop_accuracy=sop_accuracy,
        n_test=len(test),
        mean_segments=float(enc.n_segments.mean()),
        truncated_fraction=float(enc.truncated.mean()),
        **{f"seconds_{k}": v for k, v in timings.items()},
    )
    result = {
        "task": TASK,
        "settings": _jsonable_settings(cfg),
        "summary": summary,
        "tables": tables,
        "figures": [figure],
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "task_metrics.json", result)
    return result


# -- data ---------------------------------------------------------------------------------------


def _examples(cfg: dict[str, Any], seed: int) -> dict[str, list[Example]]:
    sizes = {"train": cfg["n_train"], "val": cfg["n_val"], "test": cfg["n_test"]}
    if cfg["source"] == "eraser":
        if not cfg["root"]:
            raise InputError(
                f"config key '{TASK}.root'", "source 'eraser' needs the MultiRC folder"
            )
        return {split: load_eraser(cfg["root"], split, n) for split, n in sizes.items()}
    options = cfg["synthetic"]
    return {
        split: make_synthetic(n, derived_seed(seed, _DATA, i), id_prefix=split, **options)
        for i, (split, n) in enumerate(sizes.items())
    }


def _fit_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``training`` keys fit accepts (the workflow's keys dropped)."""
    return {k: v for k, v in options.items() if k not in WORKFLOW_KEYS}


# -- prediction -----------------------------------------------------------------------------------


def _plain_predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(model.inputs(batch["ids"]))


def _sop_predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(model.backbone.inputs(batch["ids"]), batch["segments"])


def _backbone_predict(probability: float, min_keep: float):
    """Backbone predict function that, in training mode, masks random clauses of a share
    ``probability`` of the inputs (each clause kept with a probability uniform in
    [``min_keep``, 1]), so that the partial inputs SOP feeds it are in distribution. The draws
    use torch's global generator, which the trainer seeds per epoch (resumable)."""

    def predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = model.inputs(batch["ids"])
        if model.training and probability > 0:
            labels = batch["segments"][:, 0]  # (B, L)
            n_batch, n_labels = labels.shape[0], int(labels.max()) + 1
            masked = torch.rand(n_batch) < probability
            keep = min_keep + (1 - min_keep) * torch.rand(n_batch)
            kept = (torch.rand(n_batch, max(n_labels, 1)) < keep[:, None]) | ~masked[:, None]
            x = M.keep_segments(x, batch["segments"], kept.to(x.device))
        return model(x)

    return predict


def _explain(sop: SumOfParts, data: TextDataset, batch_size: int, device: torch.device) -> dict:
    """SOP's explanations of a dataset, on the CPU: prediction, scores, groups, validity."""
    keys = ("prediction", "scores", "partial", "tokens", "valid")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    n_tokens = int(data.segments.max()) + 1
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            ids = data.ids[start : start + batch_size].to(device)
            segments = data.segments[start : start + batch_size].to(device)
            explanation = sop.explain(sop.backbone.inputs(ids), segments)
            for key in keys:
                value = getattr(explanation, key).cpu()
                if key == "tokens":  # pad the token axis to the dataset's maximum
                    value = torch.nn.functional.pad(value, (0, n_tokens - value.shape[-1]))
                parts[key].append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


# -- rationales ---------------------------------------------------------------------------------


def _rationales(
    cfg: dict[str, Any],
    backbone: MiniLMClassifier,
    sop: SumOfParts,
    data: TextDataset,
    enc: Any,
    parts: dict[str, torch.Tensor],
    seed: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Selected segments (bool (N, T)) of every method, all of the size of SOP's top group."""
    predicted = parts["prediction"].argmax(1)
    top = M.top_group_segments(parts["scores"], parts["tokens"], parts["valid"], predicted)
    k = top.sum(1)
    n_segments = torch.from_numpy(enc.n_segments)
    generator = torch.Generator().manual_seed(derived_seed(seed, _RATIONALE))
    summed = M.summed_segment_scores(parts["scores"], parts["tokens"], predicted)
    chosen = {
        "sop": top,
        "sop_summed": M.top_k_segments(summed, k, n_segments, generator),
        "random": M.random_segments(k, n_segments, top.shape[1], generator),
    }
    method = cfg["attribution"]["method"]
    if method is not None:
        scores = _attribution_scores(
            method, cfg["attribution"], backbone, data, top.shape[1], device
        )
        chosen[method] = M.top_k_segments(scores, k, n_segments, generator)
    return chosen


def _attribution_scores(
    method: str,
    options: dict[str, Any],
    backbone: MiniLMClassifier,
    data: TextDataset,
    n_tokens: int,
    device: torch.device,
) -> torch.Tensor:
    """A captum attribution of the backbone's predicted class, summed over each segment's
    positions and embedding channels (signed: the segment's net push towards the class)."""
    from cosmo_sop.attribution import attribute

    method_options = {k: v for k, v in options.items() if k != "method"}
    scores = torch.zeros(len(data), n_tokens)
    batch = 32
    for start in range(0, len(data), batch):
        ids = data.ids[start : start + batch].to(device)
        labels = data.segments[start : start + batch, 0]
        with torch.no_grad():
            x = backbone.inputs(ids)
            predicted = backbone(x).argmax(1).cpu()
        attribution = torch.zeros(x.shape[0], x.shape[-1])
        for target in predicted.unique().tolist():
            rows = (predicted == target).nonzero().squeeze(1)
            values = attribute(method, backbone, x[rows.to(device)], int(target), **method_options)
            attribution[rows] = values.sum(dim=(1, 2))  # (n, L)
        segment = labels.clamp(min=0)
        summed = torch.zeros(x.shape[0], n_tokens).scatter_add_(
            1, segment, attribution.masked_fill(labels < 0, 0.0)
        )
        scores[start : start + x.shape[0]] = summed
    return scores


def _score(
    backbone: MiniLMClassifier,
    data: TextDataset,
    enc: Any,
    examples: list[Example],
    chosen: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Per-example token F1, IOU precision and recall, comprehensiveness and sufficiency."""
    token_f1, precision, recall = [], [], []
    for i, example in enumerate(examples):
        spans = M.rationale_spans(chosen[i].numpy(), enc.clauses[i])
        token_f1.append(M.token_f1(spans, example.evidence))
        p, r = M.iou_precision_recall(spans, example.evidence)
        precision.append(p)
        recall.append(r)
    comprehensiveness, sufficiency = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            ids = data.ids[start : start + batch_size].to(device)
            segments = data.segments[start : start + batch_size].to(device)
            kept = chosen[start : start + batch_size].to(device)
            x = backbone.inputs(ids)
            probability = backbone(x).softmax(-1)
            without = backbone(M.keep_segments(x, segments, ~kept)).softmax(-1)
            only = backbone(M.keep_segments(x, segments, kept)).softmax(-1)
            c, s = M.comprehensiveness_sufficiency(
                probability, without, only, probability.argmax(1)
            )
            comprehensiveness.append(c.cpu())
            sufficiency.append(s.cpu())
    return {
        "token_f1": np.asarray(token_f1),
        "precision": np.asarray(precision),
        "recall": np.asarray(recall),
        "comprehensiveness": torch.cat(comprehensiveness).double().numpy(),
        "sufficiency": torch.cat(sufficiency).double().numpy(),
    }


# -- report -------------------------------------------------------------------------------------

_LABELS = {
    "sop": "SOP (top group)",
    "sop_summed": "SOP (top-k by summed score)",
    "random": "random clauses",
    "integrated_gradients": "Integrated Gradients (per clause)",
}


def _tables(
    scored: dict[str, dict[str, np.ndarray]],
    accuracy: dict[str, M.Estimate],
    docids: list[str],
    n_boot: int,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    columns = ["rationale", "token F1", "IOU F1", "comprehensiveness", "sufficiency"]
    metrics = ("token_f1", "comprehensiveness", "sufficiency")
    rows, bold, summary = [], [], {}
    estimates: dict[str, dict[str, M.Estimate]] = {}
    for name, s in scored.items():
        e = {m: M.mean_estimate(s[m], docids, n_boot, seed) for m in metrics}
        e["iou_f1"] = M.iou_f1_estimate(s["precision"], s["recall"], docids, n_boot, seed)
        estimates[name] = e
        rows.append(
            [
                _LABELS.get(name, name),
                e["token_f1"].text(),
                e["iou_f1"].text(),
                e["comprehensiveness"].text(),
                e["sufficiency"].text(),
            ]
        )
        bold.append([False] * len(columns))
        for metric, value in e.items():
            summary[f"{name}_{metric}"] = value.estimate
            summary[f"{name}_{metric}_low"] = value.low
            summary[f"{name}_{metric}_high"] = value.high
    sop = scored["sop"]
    for name, s in scored.items():
        if name == "sop":
            continue
        d = {m: M.mean_estimate(sop[m] - s[m], docids, n_boot, seed) for m in metrics}
        d["iou_f1"] = M.iou_f1_difference(
            (sop["precision"], sop["recall"]), (s["precision"], s["recall"]), docids, n_boot, seed
        )
        rows.append(
            [
                f"SOP − {_LABELS.get(name, name)}",
                d["token_f1"].text(),
                d["iou_f1"].text(),
                d["comprehensiveness"].text(),
                d["sufficiency"].text(),
            ]
        )
        bold.append(
            [False]
            + [
                d[m].excludes_zero()
                for m in ("token_f1", "iou_f1", "comprehensiveness", "sufficiency")
            ]
        )
        for metric, value in d.items():
            summary[f"sop_minus_{name}_{metric}"] = value.estimate
            summary[f"sop_minus_{name}_{metric}_low"] = value.low
            summary[f"sop_minus_{name}_{metric}_high"] = value.high
    rationale_table = {
        "title": "Rationales of the test answers (ERASER metrics)",
        "caption": (
            "Each rationale has as many clauses as SOP's highest-scored group for its predicted "
            "class. Token F1 and IOU F1 (match at IOU >= 0.5) against the gold evidence; "
            "comprehensiveness p(y|x) - p(y|x without rationale) (higher is better) and "
            "sufficiency p(y|x) - p(y|rationale only) (lower is better) of the backbone, masked "
            "tokens set to [PAD]. Mean [95% interval, bootstrap over documents]; differences "
            "in bold where the interval excludes 0."
        ),
        "columns": columns,
        "rows": rows,
        "bold": bold,
    }
    accuracy_table = {
        "title": "Test accuracy",
        "caption": (
            "Fraction of test answers classified correctly; mean [95% interval, bootstrap "
            "over documents]; the difference in bold where its interval excludes 0."
        ),
        "columns": ["model", "accuracy"],
        "rows": [
            ["MiniLM backbone", accuracy["backbone"].text()],
            ["SOP", accuracy["sop"].text()],
            ["SOP − backbone", accuracy["sop_minus_backbone"].text()],
        ],
        "bold": [
            [False, False],
            [False, False],
            [False, accuracy["sop_minus_backbone"].excludes_zero()],
        ],
    }
    summary["sop_minus_backbone_accuracy"] = accuracy["sop_minus_backbone"].estimate
    summary["sop_minus_backbone_accuracy_low"] = accuracy["sop_minus_backbone"].low
    summary["sop_minus_backbone_accuracy_high"] = accuracy["sop_minus_backbone"].high
    return [accuracy_table, rationale_table], summary


def _figure(
    path: Path,
    examples: list[Example],
    enc: Any,
    parts: dict[str, torch.Tensor],
    chosen: torch.Tensor,
    n_examples: int,
) -> None:
    """A few test passages, clause by clause: gold evidence marked, SOP's clauses shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cosmo_sop.storage import atomic_path

    n_examples = max(1, min(n_examples, len(examples)))
    lines_per = [len(enc.clauses[i]) + 2 for i in range(n_examples)]
    fig, axes = plt.subplots(
        n_examples, 1, figsize=(9, 0.28 * sum(lines_per) + 0.6 * n_examples), squeeze=False
    )
    predicted = parts["prediction"].argmax(1)
    for i, ax in enumerate(axes[:, 0]):
        example = examples[i]
        ax.set_axis_off()
        words = [w for s in example.sentences for w in s]
        gold = {t for a, b in example.evidence for t in range(a, b)}
        head = (
            f"Q: {' '.join(example.question)}   A: {' '.join(example.answer)}   "
            f"label {bool(example.label)}, SOP says {bool(predicted[i])}"
        )
        n_lines = lines_per[i]
        ax.text(0, 1, head, fontsize=8, weight="bold", va="top", transform=ax.transAxes)
        for row, (a, b, _, segment) in enumerate(enc.clauses[i], start=1):
            evidence = any(t in gold for t in range(a, b))
            face = "#f4a261" if bool(chosen[i, segment]) else "none"
            ax.text(
                0.02,
                1 - row / n_lines,
                ("[evidence] " if evidence else "") + " ".join(words[a:b]),
                fontsize=8,
                va="top",
                transform=ax.transAxes,
                bbox={"facecolor": face, "edgecolor": "none", "pad": 1},
            )
    fig.suptitle("Test passages: SOP's top group shaded, gold evidence marked", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _jsonable_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "seed",
        "source",
        "root",
        "n_train",
        "n_val",
        "n_test",
        "n_sop_train",
        "max_length",
        "max_segments",
        "synthetic",
        "backbone_mask_probability",
        "backbone_mask_min_keep",
        "n_boot",
        "attribution",
    )
    settings = {k: cfg[k] for k in keep}
    settings["backbone_training"] = cfg["backbone_training"]
    settings["sop_training"] = cfg["sop_training"]
    settings["sop"] = cfg["sop"]
    return settings
