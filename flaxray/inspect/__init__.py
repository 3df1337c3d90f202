"""What trained models look at, every seed at once.

    compute      feature maps, first-layer filters, dense templates, Grad-CAM, saliency (jax)
    attribution  do the seeds look at the same place? (numpy)
    plots        figures of the maps (matplotlib)
    report       inspect.md and inspect.json
"""
