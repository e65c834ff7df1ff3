"""The result cache: what a model said about an input, so that the same input is not scored
twice (core.cache.store), and its upkeep (core.cache.upkeep: stats, clear, evict).

Keyed by (model, the revision the model keys on, SHA-256 of the input). Framework-free: the
engine looks inputs up before a forward pass and stores what it scored after the write that
used it; the worker's reconciler evicts; the CLI shows stats and clears.
"""
