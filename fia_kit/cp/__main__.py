"""``python -m fia_kit.cp module:function --nproc 2``: run a function on gloo ranks, or one rank under torchrun."""

from .groups import main

raise SystemExit(main())
