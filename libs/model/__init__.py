"""The detector's graph: backbones, FPN, RPN, the Fast R-CNN head and its
classifiers, the reference branch (prototypes), losses, summaries, the
preprocessing shared by training and serving."""
