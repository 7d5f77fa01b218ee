import sys

from diffuse_edu.cli import main

sys.exit(main())
