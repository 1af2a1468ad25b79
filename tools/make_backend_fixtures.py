"""Write the TensorFlow reference outputs that tests/test_backends.py checks every backend against.

Run once under the TensorFlow backend (the package's reference engine), and again only when a
case in tests/backend_cases.py changes:

    KERAS_BACKEND=tensorflow python tools/make_backend_fixtures.py

It writes ``tests/fixtures/backends/reference_outputs.npz``: for each case, the input batch and
the eval- and training-mode logits of the network with its seeded weights.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import keras  # noqa: E402

import backend_cases  # noqa: E402


def main() -> None:
    if keras.backend.backend() != "tensorflow":
        sys.exit("Run under KERAS_BACKEND=tensorflow: the references are TensorFlow's outputs.")
    arrays = {}
    for case in backend_cases.CASES:
        model = backend_cases.build(case)
        x = backend_cases.images(case)
        arrays[f"{case}/images"] = x
        for mode, value in backend_cases.outputs(model, x).items():
            arrays[f"{case}/{mode}"] = value
        print(f"{case}: {model.count_params():,} parameters, logits {value.shape}")
    os.makedirs(backend_cases.FIXTURES, exist_ok=True)
    np.savez_compressed(backend_cases.REFERENCE, **arrays)
    print(f"wrote {backend_cases.REFERENCE}")


if __name__ == "__main__":
    main()
