"""The RAG sidecar's evaluation set and its runner: ``python -m plugins.rag.eval`` (see plugins/rag/EVAL.md).

``dataset`` reads the corpus and the labelled questions, ``metrics`` holds recall@k and MRR, ``gateway``
embeds through a gateway's ``/v1/embeddings`` (one it starts on loopback by default), ``run`` ingests and
asks.
"""
