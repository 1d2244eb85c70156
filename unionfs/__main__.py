"""``python -m unionfs`` runs the command-line interface."""

from unionfs.cli.main import main

raise SystemExit(main())
