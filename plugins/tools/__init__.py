"""tools: a first-party MCP server that serves a ``tools.yaml`` registry of HTTP endpoints as MCP tools
(README.md here). A sidecar: it imports nothing of ``gateway``."""
