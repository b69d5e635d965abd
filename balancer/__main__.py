import sys

from balancer.daemon import main

sys.exit(main())
