"""``python -m fcnseg`` (also what ``torchrun -m fcnseg train ...`` runs)."""

from .cli import main

raise SystemExit(main())
