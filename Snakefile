# cosmo-sop: weak-lensing mass maps -> (Omega_m, sigma_8) with faithful Sum-of-Parts explanations.
#
#   snakemake --cores all                      # the built-in demo (mock CosmoGrid)
#   snakemake --cores all --configfile my.yaml # your settings (config/README.md lists every key)
#   snakemake --profile workflow/profiles/slurm
#
# Every rule calls the cosmo-sop library through its CLI (`python -m cosmo_sop`); the logic lives
# in cosmo_sop/, never here.

import re

from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    # Level names may hold "." (a regex wildcard): match them literally.
    level="|".join(re.escape(level) for level in NOISE_LEVELS),


include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/science.smk"
include: "workflow/rules/tasks.smk"


rule all:
    input:
        data_stage_outputs(),
        layout.report(RESULTS),
    default_target: True
