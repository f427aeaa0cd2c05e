"""``python -m cifc_bench.cli``: the command line, as torchrun and accelerate launch start it."""

from cifc_bench.cli import main

raise SystemExit(main())
