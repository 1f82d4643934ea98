import sys

from riskengine.cli import main

sys.exit(main())
