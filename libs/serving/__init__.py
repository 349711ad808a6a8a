"""Serving: the SavedModel export and its Detector, predicting image files."""
