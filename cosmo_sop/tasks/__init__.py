"""Tasks beyond weak lensing: the ViT image task and the BERT text task, each with run()."""

# The entries are the subpackages' run modules (cosmo_sop.tasks.images.run, ...text.run),
# imported by the CLI on demand: importing this package loads no model.
__all__: list[str] = []
