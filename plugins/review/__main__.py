"""``python -m plugins.review serve [--host 127.0.0.1] [--port 8103]``."""

import sys

from plugins.review.app import DEFAULT_PORT, build
from plugins.sdk import serve

if __name__ == "__main__":
    sys.exit(serve("review", lambda settings: build(settings)[0], default_port=DEFAULT_PORT))
