"""``python -m neuralpath ...`` (and ``torchrun -m neuralpath ...``): the CLI."""

import sys

from neuralpath.cli import main

sys.exit(main())
