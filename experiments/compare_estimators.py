"""Compare ELBO estimators: elbo, meanfield, stl, iwae and dreg on one model and dataset.

Thin wrapper around :func:`pyro_vae.apps.compare.run_comparison` (the same as ``pyro-vae compare``):
trains every estimator (iwae and dreg at each ``--ks``) for ``--epochs`` with each of at least
three ``--seeds``, then writes ``comparison.md``/``.csv`` (test ELBO, importance-sampled
log p(x), seconds per epoch, gradient SNR; mean +- sd over seeds), ``learning_curves.png`` and
``snr.png`` into ``--out``.

Example (MNIST test split as the dataset)::

    OMP_NUM_THREADS=1 python experiments/compare_estimators.py \\
        --dataset ../shared/data/mnist-t10k --epochs 8 --ks 5 20 --iw-samples 5000 \\
        --num-test 250 --out runs/compare-mnist
"""

import argparse
import sys

from pyro_vae.apps.compare import add_compare_flags, main
from pyro_vae.config import HelpFormatter

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    add_compare_flags(parser)
    sys.exit(main(parser.parse_args(), parser))
