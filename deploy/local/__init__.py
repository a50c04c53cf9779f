"""The embedded stack on one machine: broker, object store, model server, supervised services."""
