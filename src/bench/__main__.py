"""``python -m src.bench ...``: see :mod:`src.bench`."""
from src.bench.cli import main

main()
