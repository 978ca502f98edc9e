"""`python -m sopy` is the `sopy` command."""

from sopy.cli.main import main

main()
