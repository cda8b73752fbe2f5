import sys

from ckpt_viewer.cli import main

sys.exit(main())
