"""Multi-host start-up: `jax.distributed.initialize` when launched on several hosts.

On TPU pods and SLURM/GPU clusters JAX discovers the coordinator itself; on
other clusters set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (see launch/).

When a process dies, the others stop sending it work and abort once it has
missed heartbeats for PFLOW_HEARTBEAT_TIMEOUT_S seconds (default 100, JAX's),
with "the JAX distributed service detected fatal errors ... another task died":
a bounded wait, never a hang. Rerunning the job resumes from the last checkpoint.
"""

import os

import jax


def initialize() -> None:
  """Initialises the distributed runtime when the environment asks for it."""
  timeout = dict(heartbeat_timeout_seconds=int(os.environ.get('PFLOW_HEARTBEAT_TIMEOUT_S', 100)))
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']), **timeout)
  elif os.environ.get('SLURM_JOB_ID') and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize(**timeout)
  elif os.environ.get('TPU_WORKER_HOSTNAMES') and ',' in os.environ['TPU_WORKER_HOSTNAMES']:
    jax.distributed.initialize(**timeout)
