"""``python -m console``: the mesh console on http://127.0.0.1:8080 (settings: console/config.py)."""

from console.server import main

raise SystemExit(main())
