"""``python -m plugins.guard serve [--host 127.0.0.1] [--port 8101]``."""

import sys

from plugins.guard.app import DEFAULT_PORT, build
from plugins.sdk import serve

if __name__ == "__main__":
    sys.exit(serve("guard", lambda settings: build(settings)[0], default_port=DEFAULT_PORT))
