"""``python -m seq2seq_distill <command> ...``"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
