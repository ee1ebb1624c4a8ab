# sdeseg_jax first: its environment defaults (JAX_PLATFORMS, the CPU XLA_FLAGS) must be in place
# before any benchmark starts JAX's backend.
import sdeseg_jax  # noqa: F401
