import sys

from cryomap.cli import main

if __name__ == "__main__":  # spawned worker processes re-import this module: only the parent runs the CLI
    sys.exit(main())
