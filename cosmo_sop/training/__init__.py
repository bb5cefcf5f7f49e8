"""Training the networks of :mod:`cosmo_sop.models` on the patch stores, resumably.

:func:`train_backbone` and :func:`train_sop` are the workflow's training steps (rules
``train_backbone``, ``train_xdnn``, ``train_sop``): they build a model from the config, train it
with :func:`fit` and write its test metrics. :func:`fit` is the one trainer (AdamW, one-cycle
schedule, early stopping, a checkpoint after every epoch that an interrupted run resumes from,
bit-identically); its options are the config's ``training`` section and ``seed``
(:func:`training_options`). :class:`PatchData` opens a patch store (and its segments) and hands
out a :class:`PatchDataset` per split; :func:`augment_batch` and :func:`mask_random_groups`
augment training batches; :func:`evaluate` gives a model's errors and predictions on a dataset;
:func:`random_group_floor` the error of the backbone on random groups, the floor under SOP's.
Launched by ``torchrun`` (config key ``training.gpus`` above 1), the same functions train
data-parallel on several GPUs, as :mod:`cosmo_sop.training.distributed` describes.
"""

from cosmo_sop.training.augment import augment_batch, dihedral_transform, mask_random_groups
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.checkpoint import config_hash
from cosmo_sop.training.comparison import mse_ratio_to_backbone
from cosmo_sop.training.data import SAMPLE_KEYS, SPLITS, PatchData, PatchDataset
from cosmo_sop.training.evaluation import evaluate
from cosmo_sop.training.floor import random_group_floor, random_token_sets
from cosmo_sop.training.loop import derived_seed, fit
from cosmo_sop.training.options import select_device, training_options
from cosmo_sop.training.runs import (
    INIT_PURPOSE,
    GroupStatistics,
    fit_options,
    predict_backbone,
    predict_sop,
    sop_model_settings,
    train_backbone,
    train_sop,
)

__all__ = [
    "GroupStatistics",
    "INIT_PURPOSE",
    "SAMPLE_KEYS",
    "SPLITS",
    "EpochBatchSampler",
    "PatchData",
    "PatchDataset",
    "augment_batch",
    "collate_batch",
    "config_hash",
    "derived_seed",
    "dihedral_transform",
    "evaluate",
    "fit",
    "fit_options",
    "mask_random_groups",
    "mse_ratio_to_backbone",
    "predict_backbone",
    "predict_sop",
    "random_group_floor",
    "random_token_sets",
    "select_device",
    "sop_model_settings",
    "train_backbone",
    "train_sop",
    "training_options",
]
