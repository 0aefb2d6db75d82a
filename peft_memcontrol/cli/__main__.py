"""``python -m peft_memcontrol.cli``: the ``memcontrol`` command."""

import sys

from . import main


sys.exit(main())
