"""The embedded TF-Serving-compatible model server (gRPC PredictionService/ModelService + REST).

Importing this package stays light (no TensorFlow): the stack needs only `command()`
and the health checks; the server itself is `python -m recstream.deploy.modelserver`.
"""

from recstream.deploy.modelserver.launch import command, grpc_healthy, rest_healthy

__all__ = ["command", "grpc_healthy", "rest_healthy"]
