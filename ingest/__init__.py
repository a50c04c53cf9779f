"""Ingest stage: Faust agents that land transactions in the object store as Parquet."""
