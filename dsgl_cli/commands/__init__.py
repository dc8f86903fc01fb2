"""One module per subcommand; each has ``register(app, handle_errors)``."""
