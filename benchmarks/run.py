"""The benchmark suite; the same code as ``grokjax bench`` (see grokjax/bench.py).

    python benchmarks/run.py --quick --out bench_out
"""

import sys

from grokjax.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
