"""The README's example plugin, in plain Starlette: email addresses become [email] before the model."""

import os
import re

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TOKEN = os.environ["PLUGIN_TOKEN"]  # the route's `token:`; refuse any call without it
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


async def pre(request: Request) -> JSONResponse:
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return JSONResponse({"error": "unauthorized"}, status_code=401)
    call = await request.json()  # {protocol, hook, request, config, tenant, delegation, deadline, ...}
    body, found = call["request"], 0
    for message in body.get("messages", []):
        if isinstance(message.get("content"), str):
            message["content"], n = EMAIL.subn("[email]", message["content"])
            found += n
    if not found:
        return JSONResponse({"action": "continue"})
    if call["config"].get("block"):  # the route's options for this plugin
        return JSONResponse(
            {"action": "reject", "status": 400, "code": "pii_detected", "message": "No email addresses."}
        )
    return JSONResponse({"action": "modify", "request": body, "annotations": {"emails": found}})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/hooks/pre", pre, methods=["POST"]), Route("/healthz", healthz)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8110")))
