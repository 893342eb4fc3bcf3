"""CI check: start ``app.py --local`` with its real server and pay one request; exit 0 on success.

Run from the repository: ``python examples/wsgi/check.py`` (anvil must be findable, see
``X402GATE_ANVIL``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: examples/_check.py is shared

from examples._check import check_example  # noqa: E402

if __name__ == "__main__":
    sys.exit(check_example(HERE / "app.py", "/weather"))
