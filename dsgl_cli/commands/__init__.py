"""One module per subcommand: its own options, the settings it takes, and its workflow (config in, engine out)."""
