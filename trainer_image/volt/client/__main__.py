"""``python -m volt.client``: the ``volt`` command."""
import sys

from volt.client.cli import main

sys.exit(main())
