"""The .arch language: grammar loading, parsing to an AST, and elaboration into the IR."""
