"""Staged network-slimming pipeline: sparsity (sparsity.py), coupling graph (graph.py), channel masks
(masks.py), beta compensation and compact rebuild (surgery.py), layer pruning (layers.py), costs
(measure.py), stage records (records.py), `python -m prune.pipeline` and `python -m prune.report`."""
