"""A tool that cannot start: it complains on stderr and exits with status 3 before connecting."""

import sys

sys.stderr.write("exit_at_once: no licence for this tool\n")
sys.exit(3)
