"""python -m ddpm -> ddpm.cli.main()"""

import sys

from ddpm.cli import main

sys.exit(main())
