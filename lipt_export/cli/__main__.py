"""`python -m lipt_export.cli` runs the command line (as the `lipt-export` script does)."""
from lipt_export.cli import main

main()
