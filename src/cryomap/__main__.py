import sys

from cryomap.cli import main

sys.exit(main())
