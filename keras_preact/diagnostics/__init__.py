"""Signal-propagation diagnostics (paper Eqn 4-8): measure, plot, and a command line.

    >>> from keras_preact.diagnostics import propagation_norms
    >>> norms = propagation_norms(model, images, labels)   # forward / backward / direct-path

``python -m keras_preact.diagnostics --help`` measures several shortcut variants of one net
and writes a figure and a JSON file (see docs/propagation.md). The plotting module imports
matplotlib only when called.
"""

from keras_preact.diagnostics.propagation import per_example_norm, propagation_norms

__all__ = ["per_example_norm", "propagation_norms"]
