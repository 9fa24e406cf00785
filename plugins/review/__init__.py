"""review: human review of held answers and tool calls, as a sidecar plugin (README.md beside this)."""
