"""Test setup: 8 fake CPU devices (set before jax is imported) for sharding tests.

Unsharded code still runs on device 0; sharding tests build their own meshes.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (after the environment is set)

assert jax.device_count() == 8, 'conftest must run before jax is initialised'
