"""The HTTP API (FastAPI). Imports no ML framework and no worker code, so it starts fast."""
