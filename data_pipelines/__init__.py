"""Data layer of sdeseg_jax: dataset readers, one-off preparation, step-indexed tf.data
pipelines."""

import os

# TensorFlow only reads files here: keep its start-up chatter (oneDNN, CPU features) out of the
# logs of this package's commands (sdeseg_jax's set the same default in sdeseg_jax/__init__.py).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
