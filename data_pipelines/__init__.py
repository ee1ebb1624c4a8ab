"""Data layer of sdeseg_jax: dataset readers, one-off preparation, step-indexed tf.data pipelines."""
