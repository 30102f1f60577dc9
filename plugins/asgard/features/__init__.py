"""Features: the gold layer (Iceberg), the Feast store, feature view registration and materialization."""
