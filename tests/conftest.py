import os

import keras_preact_commands

# The test process is run as the commands run (oneDNN on, TensorFlow's start-up lines off, its
# C++ logging quieter still), before anything imports Keras: `import keras_preact` sets nothing.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras_preact_commands.prepare_process()

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
