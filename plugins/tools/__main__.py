"""``python -m plugins.tools serve [--host 127.0.0.1] [--port 8104]``; the registry is ``$TOOLS_REGISTRY``
(default: the shipped ``plugins/tools/tools.yaml``)."""

import sys

from plugins.sdk import serve
from plugins.tools.app import DEFAULT_PORT, build

if __name__ == "__main__":
    sys.exit(serve("tools", build, default_port=DEFAULT_PORT))
