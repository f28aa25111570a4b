"""Networks the project has never seen, written as researchers write them: plain
`flax.linen` (flax_nets.py), each with its Keras twin (keras_nets.py). Nothing here
imports cnn_jax: the bench trains them through `--config.model=module:Class`."""
