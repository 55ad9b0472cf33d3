"""keras_gmix: G-Mix, Binary G-Mix and Decomposed G-Mix for Keras 3 `model.fit`."""
