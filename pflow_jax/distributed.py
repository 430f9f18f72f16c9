"""Multi-host start-up: `jax.distributed.initialize` when launched on several hosts.

On TPU pods and SLURM/GPU clusters JAX discovers the coordinator itself; on
other clusters set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (see launch/).
"""

import os

import jax


def initialize() -> None:
  """Initialises the distributed runtime when the environment asks for it."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize(
        coordinator_address=os.environ['JAX_COORDINATOR_ADDRESS'],
        num_processes=int(os.environ['JAX_NUM_PROCESSES']),
        process_id=int(os.environ['JAX_PROCESS_ID']))
  elif os.environ.get('SLURM_JOB_ID') and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()
  elif os.environ.get('TPU_WORKER_HOSTNAMES') and ',' in os.environ['TPU_WORKER_HOSTNAMES']:
    jax.distributed.initialize()
