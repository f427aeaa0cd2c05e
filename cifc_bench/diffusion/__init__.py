"""The diffusion layer: base models, placeholder tokens, training helpers, samplers, fused adapters and the image
scorers. It imports only the core."""
