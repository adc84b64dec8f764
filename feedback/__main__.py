"""``python -m feedback <command>``: the same as ``rlhf feedback <command>``, without loading the
training stack first (``rlhf`` imports it for every command), so ``serve`` starts in about a second."""

import logging
import os

from feedback.cli import main

logging.basicConfig(level=os.environ.get("RLHF_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s")
main()
