import os

# See lipt_export/cli.py: spinning OpenMP pools starve each other on a 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
