"""`python -m recipes_lib.commands ...` is the `recipes` command."""

import sys

from recipes_lib.commands import main

sys.exit(main())
