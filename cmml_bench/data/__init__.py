"""Datasets, protocols' task splits and missing-modality masks."""
