from ptmkit.cli import main

raise SystemExit(main())
