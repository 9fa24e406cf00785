"""guard: PII redaction/blocking/masking, prompt-injection screening and JSON-schema output validation,
as a sidecar plugin of the gateway (README.md beside this file)."""
