"""Training data and training jobs in SQL."""
