"""neuralpath: explain PyTorch image classifiers through neural pathways."""

__version__ = "0.1.0"
