"""DALI graphs (decode + preprocess), the job runner and the ``fovea`` command line."""
