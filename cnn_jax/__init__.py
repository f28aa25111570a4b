"""cnn_jax: image classification with convolutional networks in JAX/Flax."""
