"""sdeseg_jax: semi-supervised and domain-adaptive semantic segmentation with self-supervised
depth."""

__version__ = '0.1.0'
