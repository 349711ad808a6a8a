"""Evaluation: VOC / COCO metrics, error analysis, the HTML report."""
