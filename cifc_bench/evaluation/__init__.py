"""The evaluation layer: what every evaluation asks for, the image cache, per-image metrics, the tracks' metrics,
neglect, and the statistics behind every interval. It imports the core and the diffusion layer."""
