"""Data: sources read into raw CPU tensors, then turned into model input.

Two stages, kept apart so that seeded or expensive work happens once and per-batch work
happens on the device:

1. :func:`load_data` (:mod:`~pyro_vae.data.sources`) reads a built-in dataset or a file into a
   :class:`DataSplit` (:mod:`~pyro_vae.data.arrays`) of raw train/test tensors: ``uint8``
   8-bit levels, or ``float32``.
2. :class:`Preprocess` (:mod:`~pyro_vae.data.preprocess`) binarizes or dequantizes: once per
   split for seeded transforms, per batch on the device for random ones.

:mod:`~pyro_vae.data.idx` reads MNIST's idx files; :mod:`~pyro_vae.data.shapes` generates the
embedded dataset.
"""

from pyro_vae.data.arrays import LAYOUTS, DataFormatError, DataSplit, as_loaded
from pyro_vae.data.idx import read_idx
from pyro_vae.data.preprocess import BINARIZE, Preprocess, batch_transform, prepare_split
from pyro_vae.data.sources import DATASETS, DatasetNotFoundError, canonical_source, load_data

__all__ = [
    "BINARIZE",
    "LAYOUTS",
    "DATASETS",
    "DataFormatError",
    "DataSplit",
    "DatasetNotFoundError",
    "canonical_source",
    "Preprocess",
    "as_loaded",
    "batch_transform",
    "load_data",
    "prepare_split",
    "read_idx",
]
