"""The networks (lessons 02-04, 06, and later 08-13): imports only torch and einops.

``time_embedding`` (04), ``attention`` (03, cross-attention 09), ``conditioning`` (08-09),
``unet`` (03), ``mlp`` (the 2-D denoiser of 02), ``classifier`` (the feature network of 06),
``text`` and ``clip`` (09), ``vae`` (10), ``dit`` (12), ``lora`` (13).
"""
