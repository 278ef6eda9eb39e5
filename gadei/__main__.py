import sys

from gadei.cli import main

sys.exit(main())
