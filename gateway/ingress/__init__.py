"""Ingress translators: other vendors' wire formats in, the gateway's OpenAI format through."""
