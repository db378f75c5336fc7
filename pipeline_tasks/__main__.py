import sys

from pipeline_tasks.cli import main

if __name__ == "__main__":
    sys.exit(main())
