"""pflow_jax: Pyramidal Flow Matching (Jin et al., 2024) in JAX/Flax."""

import flax

# Parameters carry logical axis names; shardings are applied by our own jit
# out_shardings (parallel/rules.py), never eagerly at variable creation.
flax.config.update('flax_always_shard_variable', False)
