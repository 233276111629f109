"""`python -m cl_runner.report DIR`: the same as `cl-report DIR`."""
from cl_runner.report import main

main()
