"""Test setup: 8 fake CPU devices (set before jax is imported) for sharding tests, quick
compiles (tests/xla_env.py), and one persistent compilation cache for the session.

Unsharded code still runs on device 0; sharding tests build their own meshes. The cache
(a fresh temporary directory per session, inherited by the launchers the CLI tests
start) compiles a program once even when several tests or processes build it anew.
"""

import os
import tempfile

from tests import xla_env

os.environ.setdefault('XLA_FLAGS', xla_env.xla_flags(8))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='pflow_jax_xla_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import jax  # noqa: E402  (after the environment is set)

assert jax.device_count() == 8, 'conftest must run before jax is initialised'
