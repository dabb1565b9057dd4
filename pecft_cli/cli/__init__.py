"""The `pecft` command line: the app's wiring, then one module per command."""
