"""``python -m txsocksgss.cli``: the ``socksgss`` console script without the script."""

from txsocksgss.cli import main

raise SystemExit(main())
