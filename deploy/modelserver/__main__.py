"""`python -m deploy.modelserver`: see deploy/modelserver/server.py."""

from deploy.modelserver.server import main

raise SystemExit(main())
