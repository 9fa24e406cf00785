"""A small SDK for sidecar plugins of the gateway (protocol v1); it depends on nothing in ``gateway``.

A plugin is a few async hook functions over typed values::

    from plugins.sdk import HookCall, Answer, continue_, reject, create_app

    async def pre(call: HookCall) -> Answer:
        if "forbidden" in str(call.request.get("messages")):
            return reject(400, "forbidden_word", "this route does not take that word")
        return continue_(annotations={"checked": True})

    app = create_app(hooks={"pre": pre}, token="s3cret")

``create_app`` serves ``POST /hooks/{hook}``, ``/api/*`` and ``GET /healthz``, refuses calls without the
plugin token, checks the protocol version and turns an exception into a 500 (which the gateway treats as a
plugin failure: ``on_error``). ``serve`` is the ``python -m plugins.<name> serve`` command line, and
``GatewayClient`` makes delegated calls back to the gateway's ``/v1/*`` as the request's caller.
"""

from plugins.sdk.app import create_app
from plugins.sdk.client import GatewayCallError, GatewayClient
from plugins.sdk.protocol import (
    PROTOCOL_VERSION,
    Answer,
    Delegation,
    HookCall,
    ProtocolError,
    Rejected,
    continue_,
    modify,
    reject,
    respond,
)
from plugins.sdk.serve import PluginSettings, serve

__all__ = [
    "PROTOCOL_VERSION",
    "Answer",
    "Delegation",
    "GatewayCallError",
    "GatewayClient",
    "HookCall",
    "PluginSettings",
    "ProtocolError",
    "Rejected",
    "continue_",
    "create_app",
    "modify",
    "reject",
    "respond",
    "serve",
]
