import sys

from diffuse_edu.course.cli import main

sys.exit(main())
