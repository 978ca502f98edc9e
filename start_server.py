"""Start Sopy in the background and print its URL, PID and log file (same as `sopy start`)."""

import sys

from sopy.cli.main import main

main(["start", *sys.argv[1:]])
