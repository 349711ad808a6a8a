"""The model side of mining a new class's unlabelled objects (issue 32, docs/fewshot.md):
a frozen feature space for crops (embedding.py) and the nearest-neighbour verdict
(verify.py). Reading images, finding candidates and writing labels: data/io/mining/candidates.py,
data/io/mining/labels.py."""
