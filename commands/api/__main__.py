import sys

from commands.api.server import main

sys.exit(main())
