"""Shared by every part of the project, with no model knowledge: TensorFlow's
TF1 mode (tf_compat), atomic files and progress lines (io_utils), the quiet
console, command-line plumbing, image-file decoding rules, user errors."""
