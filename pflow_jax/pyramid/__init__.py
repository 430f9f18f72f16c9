"""The spatial pyramid of Pyramidal Flow Matching as pure functions.

schedule: stage windows, timestep tables, jump coefficients (numpy, static).
flow: multi-resolution latents and noise, stage endpoints, the training loss.
sampler: block noise, the renoising stage jump, the Euler pyramid sampler.
"""
