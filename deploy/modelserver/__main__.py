"""`python -m recstream.deploy.modelserver`: see deploy/modelserver/server.py."""

from recstream.deploy.modelserver.server import main

raise SystemExit(main())
