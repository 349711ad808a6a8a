"""Mining a new class's unlabelled objects, the data side (issue 32, docs/fewshot.md).
One round, in the order tools/mine_labels.py runs it:

- candidates.py: detect the new classes in labelled images, verify each candidate
  against reference, base-class and background crops, decide accepted / doubtful /
  rejected (mine_images);
- labels.py: write the round: the input's annotations with the accepted boxes and the
  doubtful ones as ignore regions, in the format they were read from, Label Studio's
  pre-annotations and the ranked list;
- review_page.py: the reviewer's drawn page of the round;
- review_import.py: a reviewer's Label Studio export applied to the round.

The model side (the frozen feature space and the nearest-neighbour vote) is libs/mining;
Label Studio's task format, which tools/predict.py writes too, is
data/io/pre_annotations.py.
"""
