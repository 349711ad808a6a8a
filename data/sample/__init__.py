"""Generated sample data (data.sample.generate): a tiny synthetic VOC dataset."""
