"""``python -m infra.sandbox_psp``: run one sandbox PSP until SIGINT or SIGTERM."""

from infra.sandbox_psp.server import main

raise SystemExit(main())
