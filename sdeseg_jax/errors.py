"""The config error of the project. With the data, checkpoint and weight-file errors
(data_pipelines DataError, training.checkpointing CheckpointError, weights.report
WeightImportError) it is what a run reports in one line instead of a traceback (sdeseg_jax.cli):
their messages name the key, file or value at fault and what to change."""


class ConfigError(ValueError):
  """A config value, or a combination of values, that cannot work."""
