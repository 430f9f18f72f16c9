"""The paper's newer model, pyramid-flow-miniflux, at 384p and 768p.

  python -m pflow_jax.train --config=configs/pyramid_flow_flux.py:768p --workdir=gs://...

The miniFLUX DiT (family 'flux': 8 double-stream and 16 single-stream blocks,
30 heads x 64, RoPE over (frame, y, x) with axes (16, 24, 24); 1,972,059,200
parameters, exactly the official count) with CLIP-L pooled (768) and T5-XXL
sequence (4096) text embeddings. The official recipe (scripts/train_pyramid_flow.sh,
whose default model is this one) is the SD3 one: data, VAE, AdamW (lr 5e-5, betas
0.9/0.95, weight decay 1e-4, clip 1, 1000 warm-up steps), bf16 and sampling
follow configs/pyramid_flow_sd3.py, which this file starts from.
"""

from configs import pyramid_flow_sd3


def get_config(arg: str = '384p'):
  c = pyramid_flow_sd3.get_config(arg)
  c.model.update(family='flux', num_layers=8, num_single_layers=16, num_attention_heads=30,
                 attention_head_dim=64, joint_attention_dim=4096, caption_projection_dim=1920,
                 pooled_projection_dim=768, pos_embed_type='none', rope_axes_dim=(16, 24, 24))
  return c
