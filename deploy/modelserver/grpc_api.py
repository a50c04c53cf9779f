"""TF Serving's gRPC services: PredictionService (Predict, GetModelMetadata) and ModelService.

Classify, Regress and MultiInference answer UNIMPLEMENTED. Message sizes both ways and the
worker pool follow the server's Limits; gRPC itself answers RESOURCE_EXHAUSTED to a message
over the limit, and to RPCs beyond the queue it allows. A failure that is not a ServingError
answers INTERNAL "internal error" and is logged, never its text.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from recstream.deploy.modelserver import config as cfg
from recstream.deploy.modelserver import tensors
from recstream.deploy.modelserver.errors import ServingError, code_number
from recstream.deploy.modelserver.limits import Limits
from recstream.deploy.modelserver.registry import Registry

log = logging.getLogger(__name__)

SIGNATURE_DEF = "signature_def"
QUEUED_PER_WORKER = 4  # RPCs admitted per worker thread (running or waiting); more: RESOURCE_EXHAUSTED


def _spec_args(spec: model_pb2.ModelSpec) -> dict:
    choice = spec.WhichOneof("version_choice")
    return {
        "name": spec.name,
        "version": spec.version.value if choice == "version" else None,
        "label": spec.version_label if choice == "version_label" else None,
    }


def _abort(context: grpc.ServicerContext, error: ServingError) -> None:
    context.abort(error.code, error.message)


def _internal(context: grpc.ServicerContext, what: str) -> None:
    log.exception("%s failed", what)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):
        try:
            if not request.HasField("model_spec"):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            with self._registry.acquire(**_spec_args(request.model_spec)) as servable:
                signature, outputs = servable.predict(
                    request.model_spec.signature_name,
                    request.inputs,
                    request.output_filter,
                    decode=tensors.to_array,
                )
                version = servable.version
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.signature_name = signature
            response.model_spec.version.value = version
            for alias, (array, dtype) in outputs.items():
                response.outputs[alias].CopyFrom(tensors.to_proto(array, dtype))
            return response
        except ServingError as error:
            _abort(context, error)
        except Exception:
            _internal(context, "Predict")

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            return model_metadata(self._registry, request)
        except ServingError as error:
            _abort(context, error)
        except Exception:
            _internal(context, "GetModelMetadata")

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not supported by this server")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not supported by this server")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server")


def model_metadata(
    registry: Registry, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadataImpl: only the signature_def field, packed as a SignatureDefMap in an Any."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
    for field in request.metadata_field:
        if field != SIGNATURE_DEF:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
    with registry.acquire(**_spec_args(request.model_spec)) as servable:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF].Pack(signatures)
        return response


def model_status(
    registry: Registry, request: get_model_status_pb2.GetModelStatusRequest
) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusImpl: one version if asked for; otherwise all (a version_label is ignored, as there)."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    spec = request.model_spec
    version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
    response = get_model_status_pb2.GetModelStatusResponse()
    for entry in registry.status(spec.name, version):
        response.model_version_status.add(
            version=entry.version,
            state=int(entry.state),
            status=status_pb2.StatusProto(
                error_code=code_number(entry.status.code), error_message=entry.status.message
            ),
        )
    return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        try:
            return model_status(self._registry, request)
        except ServingError as error:
            _abort(context, error)
        except Exception:
            _internal(context, "GetModelStatus")

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        try:
            models = cfg.from_proto(request.config)
            for model in models:
                log.info("reload config entry: name=%s base_path=%s", model.name, model.base_path)
            self._registry.reload(models)
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error)
            _abort(context, error)
        except Exception:
            _internal(context, "HandleReloadConfigRequest")
        return model_management_pb2.ReloadConfigResponse(status=status_pb2.StatusProto(error_code=0))


def make_server(registry: Registry, host: str, port: int, bounds: Limits | None = None) -> grpc.Server:
    """A gRPC server with both services bound to host:port (not started)."""
    bounds = bounds or Limits()
    server = grpc.server(
        ThreadPoolExecutor(max_workers=bounds.grpc_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", bounds.max_grpc_message_bytes),
            ("grpc.max_send_message_length", bounds.max_grpc_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=bounds.grpc_workers * QUEUED_PER_WORKER,
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(registry), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {address}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot bind gRPC to {address}")
    return server
