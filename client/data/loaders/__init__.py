"""Loaders turn a dataset on disk into SubjectRecords; they read metadata, never voxels."""
