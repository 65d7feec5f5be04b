import sys

from kirin_compiler.cli import main

sys.exit(main())
