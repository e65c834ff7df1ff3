"""The API's routes, one module per resource."""

from api.routes import health, jobs, models, results, training

__all__ = ["health", "jobs", "models", "results", "training"]
