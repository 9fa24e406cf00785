"""An OpenAI-compatible LLM gateway: per-tenant keys, budgets and limits, routing, resilience, caching."""

__version__ = "0.1.0"
