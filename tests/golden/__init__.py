"""Golden outputs of image-reward 1.5: seeded checkpoints, inputs, and the script that made them."""
