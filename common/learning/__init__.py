"""Code that both sides run: the dataset, harmonisation, augmentation, splits, training."""
