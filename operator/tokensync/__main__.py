"""`python -m tokensync` is the same as the `tokensync` command."""

from tokensync.cli import main

raise SystemExit(main())
