"""Burda, Grosse & Salakhutdinov (2016), Table 1: VAE and IWAE, k = 1, 5, 50, 1 and 2 layers.

Thin wrapper around :func:`pyro_vae.apps.iwae_table1.run_table`: trains each cell with the
paper's protocol (the ``vae`` and ``two-layer`` models with the paper's tanh networks, Bernoulli
decoder, dynamic binarization, Adam eps 1e-4, batch 20, 8 stages of 3^i passes at
1e-3 * 10^(-i/7)), evaluates the test log p(x) with K = 5000 and the active units, and writes
``table1.md`` / ``table1.csv`` beside the paper's numbers into ``--out``.

The full protocol is 3,280 passes per cell; ``--passes-scale`` shrinks it. Examples::

    python experiments/iwae_table1.py --dataset mnist --data-dir data --out runs/table1
    nice python experiments/iwae_table1.py --dataset ../shared/data/mnist-t10k \\
        --passes-scale 0.01 --ks 1 5 --out runs/table1-t10k
"""

import argparse
import sys

from pyro_vae.apps.iwae_table1 import add_table1_flags, main
from pyro_vae.config import HelpFormatter

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    add_table1_flags(parser)
    sys.exit(main(parser.parse_args(), parser))
