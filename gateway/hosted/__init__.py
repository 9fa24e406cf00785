"""Hosted MCP tools in ``/v1/responses``: the gateway runs the model↔tool loop for any model.

A request tool ``{type: "mcp", server_label, allowed_tools, require_approval}`` naming a configured MCP
server (routes.yaml ``mcp_servers``) turns the request into a loop (``loop.py``): the server's tools are
listed (an ``mcp_list_tools`` item) and offered to the model as function tools; each model step is its own
delegated request through the pipeline (admitted, priced, settled and ledgered like any other, with the
loop's request as ``parent_request_id``); each call the model makes becomes an ``mcp_call`` item, run once
(``idempotency.py``) under the tool policy and the loop's hard limits, its result fed back to the model.

A ``/v1/responses`` request without an ``mcp`` tool never reaches this package.
"""
