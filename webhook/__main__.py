"""`python -m webhook` runs the console script."""

from webhook.cli import main

main()
