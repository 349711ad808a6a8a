"""Pretrained weights from installed packages: the torch checkpoint reader
and the importer that writes TF checkpoints."""
