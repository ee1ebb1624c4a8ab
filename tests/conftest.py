"""Shared test set-up: quiet TF, one persistent XLA compilation cache for all test processes."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402  (after the environment is set)

_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), '.cache', 'xla_tests')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
