"""`python -m esper_lab.audit ...` is `esper-lab audit ...`."""

import sys

from esper_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
