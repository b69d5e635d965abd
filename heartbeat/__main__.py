import sys

from heartbeat.daemon import main

sys.exit(main())
