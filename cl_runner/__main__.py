"""`python -m cl_runner ...` is `cl-run ...`."""
from cl_runner.cli import main

main()
