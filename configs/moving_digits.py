"""Moving MNIST digits with captions: the embedded default that trains on CPU.

  python -m pflow_jax.train --config=configs/moving_digits.py --workdir=runs/digits
  python -m pflow_jax.train --config=configs/moving_digits.py:tiny ...   # seconds, for tests

Variants (`--config=configs/moving_digits.py:<arg>`):
  ''   (default) the README's main job: 64x64 px, 8 frames, ~10 min on 2 CPU cores.
  tiny a few steps of a very small model at 32x32 px, for tests and smoke runs.
"""

from pflow_jax import config as config_lib


def get_config(arg: str = ''):
  c = config_lib.base_config()
  if arg == 'tiny':
    c.data.update(image_size=32, num_frames=2, train_size=64, test_size=16,
                  global_batch_size=6)
    c.latent.update(shift=-0.73, scale=1.59)
    c.model.update(sample_size=8, rope_axes_dim=(16,), num_layers=2, num_attention_heads=2, attention_head_dim=16,
                   joint_attention_dim=32, caption_projection_dim=32,
                   pooled_projection_dim=32)
    c.text.update(width=32, num_layers=1, num_heads=2)
    c.train.update(num_steps=4, log_every=2, checkpoint_every=2, sample_every=4)
    c.sample.update(steps_per_stage=[2, 2, 2], prompts=['a 3 moving left', 'a 7 moving down'])
    c.optim.warmup_steps = 2
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of configs/moving_digits.py; use "" or "tiny"')
  return c
