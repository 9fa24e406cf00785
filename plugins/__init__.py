"""Shipped sidecar plugins (DESIGN.md "Sidecar plugin protocol (v1)").

Each subpackage is a separate HTTP service started with ``python -m plugins.<name> serve``. None imports
``gateway``: a sidecar talks to the gateway only through the hook protocol and the public ``/v1/*``
endpoints. ``plugins.sdk`` is the small shared toolkit they are built on.
"""
