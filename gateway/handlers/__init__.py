"""HTTP endpoints: thin adapters between Starlette requests and the pipeline."""
