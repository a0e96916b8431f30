"""`python -m target` is the `scsi-target` command."""

from target.cli import main

raise SystemExit(main())
