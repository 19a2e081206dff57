"""`python -m app.cli`: the `deepopt` command."""

from app.cli import main

main()
