"""`python -m sopy` is the `sopy` command."""

from sopy.cli import main

main()
