"""``python -m dsgl_cli`` runs the same app as the ``dsgl`` command."""

from dsgl_cli.cli import main

if __name__ == "__main__":
    main()
