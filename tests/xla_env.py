"""XLA flags for the test processes and the launchers they start: fake CPU devices, and
quick compiles.

Most test time is XLA compiling small programs. At the CPU backend's optimisation level 0
they compile in about a third less time (tests/test_dit.py's remat test: 30 s against 47 s,
twice each; the default run on 2 workers: 23.5 minutes against 39), while the longest
running fixture (the digit scorer's 1,000 steps) runs 8% slower. Every process of a test
gets the same flags, so parity tests compare programs built alike.
"""

QUICK_COMPILE = '--xla_backend_optimization_level=0'


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` fake CPU devices."""
  return f'--xla_force_host_platform_device_count={devices} {QUICK_COMPILE}'
