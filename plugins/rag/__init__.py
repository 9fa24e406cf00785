"""The RAG sidecar: per-tenant collections, hybrid retrieval in Postgres + pgvector, grounded answers
with checked citations (DESIGN.md "rag"; see plugins/rag/README.md)."""
