"""service: the FastAPI app that stores, materializes and serves PEMN bundles."""

__version__ = "0.1.0"
