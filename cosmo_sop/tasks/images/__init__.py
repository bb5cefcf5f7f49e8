"""Task ``vit_images``: a ViT image classifier, SOP around it, and exact object masks.

Data (:mod:`.data`, :mod:`.synthetic`, :mod:`.imagenet_s`), explanations
(:mod:`.explanations`), their scores (:mod:`.metrics`), tables (:mod:`.tables`), the figure
(:mod:`.figures`) and the task's ``run(config, output_dir)`` (:mod:`.run`).
"""

from cosmo_sop.tasks.images.imagenet_s import load_imagenet_s
from cosmo_sop.tasks.images.synthetic import generate

__all__ = ["generate", "load_imagenet_s"]
