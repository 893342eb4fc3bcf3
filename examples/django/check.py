"""CI check: start ``app.py --local`` with its real server and pay both paid views; exit 0.

Run from the repository: ``python examples/django/check.py`` (anvil must be findable, see
``X402GATE_ANVIL``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository: examples/_check.py is shared

from examples._check import pay_one, start_example, stop  # noqa: E402


def main() -> int:
    process, ready = start_example(HERE / "app.py")
    try:
        print(pay_one(ready, "/weather"))  # priced in X402GATE["ROUTES"]
        print(pay_one(ready, "/forecast/lisbon"))  # priced by @require_payment
    finally:
        stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
