"""`python -m pecft_cli`: the same command line as `pecft`, for launchers that start modules."""

from pecft_cli.cli.app import main

main()
