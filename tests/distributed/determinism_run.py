"""Trains a small conv net with dgmix (dropout, BatchNorm, shuffled tf.data) under
op determinism and prints a hash of the final weights. Run twice by
tests/test_determinism.py: the hashes must be equal."""

import hashlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_gmix as kg  # noqa: E402

tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
splits = kg.data.load_dataset("digits", train_size=256, seed=0)
train, _ = kg.data.make_pipelines(splits, batch_size=32, augment="none", seed=0)
inner = kg.models.build_model(
    "small_cnn", num_classes=10, input_shape=splits.input_shape, width=8, classifier_activation=None
)
model = kg.GMixModel(inner, method="dgmix", seed=0)
model.compile(
    optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
model.fit(train, epochs=2, verbose=0)
digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in inner.get_weights()))
print(digest.hexdigest())
