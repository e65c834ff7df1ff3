"""Scheduled scoring: configuration, runs, committed state, the runner and its sources."""
