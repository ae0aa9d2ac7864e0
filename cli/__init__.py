"""Command-line client of the training-run API: `python -m cli --help`."""
