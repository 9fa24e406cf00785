"""``python -m plugins.rag serve [--host 127.0.0.1] [--port 8102]``."""

import sys

from plugins.rag.app import DEFAULT_PORT, build
from plugins.sdk import serve

if __name__ == "__main__":
    sys.exit(serve("rag", lambda settings: build(settings)[0], default_port=DEFAULT_PORT))
