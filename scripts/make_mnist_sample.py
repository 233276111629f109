"""Write the MNIST sample that ships inside the package (cl_runner/data/mnist_sample.npz): the first 10,000
training and the first 2,000 test images of MNIST with their labels, compressed (about 2 MB). The embedded
default data set of `cl-run` reads it, so the bare run needs no download.

    CL_DATA_ROOT=../shared/data python scripts/make_mnist_sample.py

MNIST (Y. LeCun, C. Cortes, C. J. C. Burges) is licensed CC BY-SA 3.0; see cl_runner/data/MNIST_SAMPLE_NOTICE.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from cl_runner.data.datasets import MNIST_SAMPLE, MNIST_SAMPLE_SIZES, read_mnist
from cl_runner import atomic


def main() -> None:
    root = Path(os.environ.get("CL_DATA_ROOT", "data"))
    arrays = {}
    for split, size in MNIST_SAMPLE_SIZES.items():
        images = read_mnist(root, split, verify=True).head(size)
        arrays[f"{split}_images"] = images.images[:, 0].numpy()
        arrays[f"{split}_labels"] = images.labels.numpy().astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic.write_bytes(MNIST_SAMPLE, buffer.getvalue())
    print(f"wrote {MNIST_SAMPLE} ({len(buffer.getvalue()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
