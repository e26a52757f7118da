"""`python -m facet.cli ...`, as `facet ...` (the demo runs its steps this way)."""
import sys

from facet.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
