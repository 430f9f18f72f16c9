"""The released causal video VAE (8x8x8, 16 latent channels, RGB): for converting the
official weights (`python -m pflow_jax.convert --vae=...`) and fine-tuning them.

  python -m pflow_jax.convert --config=configs/vae_pyramid_flow.py:miniflux \
      --vae=/models/pyramid-flow-miniflux/causal_video_vae --workdir=checkpoints/causal_video_vae

The variant picks the latent normalisation the official pipeline uses with each DiT
(models/vae.py: VAEConfig.official): 'sd3' (default) or 'miniflux'.
"""

import dataclasses

from pflow_jax import config as config_lib
from pflow_jax.models import vae as vae_lib


def get_config(arg: str = 'sd3'):
  if not config_lib.variants(arg, ('sd3', 'miniflux'), 'configs/vae_pyramid_flow.py',
                             combinable=False):
    raise ValueError('configs/vae_pyramid_flow.py needs a release: sd3 or miniflux')
  c = config_lib.vae_base_config()
  official = vae_lib.VAEConfig.official(arg)
  c.vae.update({f.name: getattr(official, f.name) for f in dataclasses.fields(official)
                if f.name in c.vae})
  c.data.update(image_size=256, num_frames=17)
  c.dtype = 'bfloat16'
  return c
