"""The classic VAE loss mistakes, trained as the Pyro programs they are, beside the correct ones.

Thin wrapper around :func:`pyro_vae.apps.pitfalls.run_pitfalls`: for each pitfall (``pixel-mean``,
``bce-grey``, ``mse``, ``logvar-std``) it trains the mistaken and the correct program with
:func:`pyro_vae.train.fit` on the same data, evaluates both under the correct model (held-out
ELBO, importance-sampled log p(x), bits/dim) and writes ``pitfalls.md``, one picture per
pitfall, ``results.json`` and ``config.json`` into ``--out``.

The data default to the MNIST test split beside the checkout (``../shared/data/mnist-t10k``)
when it is there, else the embedded shapes. Example::

    OMP_NUM_THREADS=1 python experiments/loss_pitfalls.py \\
        --dataset ../shared/data/mnist-t10k --epochs 20 --iw-samples 1000 --out runs/pitfalls
"""

import argparse
import sys
from pathlib import Path

from pyro_vae.apps.pitfalls import add_pitfalls_flags, main
from pyro_vae.config import HelpFormatter

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    add_pitfalls_flags(parser, default_dataset=str(MNIST_T10K) if MNIST_T10K.is_dir() else "shapes")
    sys.exit(main(parser.parse_args(), parser))
