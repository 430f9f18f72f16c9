"""Datasets (tfds ArrayRecord builders, no TensorFlow), grain input pipelines, video files."""
