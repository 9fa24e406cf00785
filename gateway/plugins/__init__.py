"""The hook stage: the gateway's client for sidecar plugins (DESIGN.md "Sidecar plugin protocol (v1)").

``secret`` says where the delegation secret comes from; ``hooks`` makes one hook call and checks its
answer; ``stage`` runs a route's plugins in order at the pipeline's stages 5 (pre) and 8 (post).
"""
