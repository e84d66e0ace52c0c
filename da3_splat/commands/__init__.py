"""The subcommands of ``da3-splat``: each parses its typed config and calls the library (no command imports
another). :mod:`da3_splat.cli` dispatches to them."""
