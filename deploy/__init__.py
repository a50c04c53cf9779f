"""The embedded local stack (broker, object store) and the real deployments."""
