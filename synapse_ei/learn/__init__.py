"""The image models: datasets, transforms, losses, models, training and inference (torch)."""
