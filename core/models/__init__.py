"""The model registry: shipped and configured models, and trained heads over them."""
