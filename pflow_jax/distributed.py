"""Multi-host start-up: `jax.distributed.initialize` when launched on several hosts.

On TPU pods and SLURM/GPU clusters JAX discovers the coordinator itself; on
other clusters set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (see launch/).

When a process other than the coordinator (process 0) dies, the others abort
once it has missed heartbeats for PFLOW_HEARTBEAT_TIMEOUT_S seconds (default
100, JAX's), with "the JAX distributed service detected fatal errors ...
another task died" (tested). The coordinator's death was once seen to leave the
others waiting (docs/multihost.md). Rerunning the job resumes from the last
checkpoint.
"""

from collections.abc import Mapping
import os
from typing import Any

import jax


def initialize_arguments(environ: Mapping[str, str]) -> dict[str, Any] | None:
  """The keyword arguments of `jax.distributed.initialize` this environment asks for, or
  None for a single-process run."""
  timeout = dict(heartbeat_timeout_seconds=int(environ.get('PFLOW_HEARTBEAT_TIMEOUT_S', 100)))
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return dict(coordinator_address=environ['JAX_COORDINATOR_ADDRESS'],
                num_processes=int(environ['JAX_NUM_PROCESSES']),
                process_id=int(environ['JAX_PROCESS_ID']), **timeout)
  if environ.get('SLURM_JOB_ID') and int(environ.get('SLURM_NTASKS', '1')) > 1:
    return timeout  # JAX reads the coordinator and ranks from SLURM
  if ',' in environ.get('TPU_WORKER_HOSTNAMES', ''):
    return timeout  # a multi-worker TPU slice: JAX finds its peers
  return None


def initialize() -> None:
  """Initialises the distributed runtime when the environment asks for it."""
  arguments = initialize_arguments(os.environ)
  if arguments is not None:
    jax.distributed.initialize(**arguments)
