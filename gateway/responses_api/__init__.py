"""OpenAI's Responses API (``/v1/responses``), served by every provider through the chat pipeline."""
